package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"runhub/store"
	"runhub/store/runs"
)

// originProducts are the accepted values of a task's origin_product.
var originProducts = map[string]bool{
	"user_created": true, "error_tracking": true, "eval_clusters": true, "slack": true,
	"support_queue": true, "session_summaries": true, "signal_report": true,
}

// repoPattern is GitHub's owner/name shape.
var repoPattern = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,38})/[a-z0-9._-]{1,100}$`)

// taskFields decodes the writable task fields of a create (all) or PATCH.
func taskFields(f fields, create bool) (store.TaskPatch, error) {
	var p store.TaskPatch
	present, title, err := f.str("title", false)
	if err != nil {
		return p, err
	}
	switch {
	case !present && create:
		return p, validation("title", "required", "This field is required.")
	case present && strings.TrimSpace(*title) == "":
		return p, validation("title", "blank", "This field may not be blank.")
	case present && utf8.RuneCountInString(*title) > runs.MaxTitleLen:
		return p, validation("title", "max_length", fmt.Sprintf("Ensure this field has no more than %d characters.", runs.MaxTitleLen))
	}
	p.Title = title
	present, desc, err := f.str("description", true)
	if err != nil {
		return p, err
	}
	if present {
		if desc == nil {
			desc = new(string)
		}
		p.Description = desc
	}
	present, origin, err := f.str("origin_product", false)
	if err != nil {
		return p, err
	}
	if present {
		if !originProducts[*origin] {
			return p, validation("origin_product", "invalid_choice", fmt.Sprintf("%q is not a valid choice.", *origin))
		}
		p.OriginProduct = origin
	}
	present, repo, err := f.str("repository", true)
	if err != nil {
		return p, err
	}
	if present {
		if repo != nil {
			lower := strings.ToLower(strings.TrimSpace(*repo))
			if lower == "" {
				repo = nil
			} else if !repoPattern.MatchString(lower) {
				return p, validation("repository", "invalid_input", "Repository must be in the format 'organization/repository'.")
			} else {
				repo = &lower
			}
		}
		p.Repository = &repo
	}
	if raw, ok := f["json_schema"]; ok {
		var schema json.RawMessage
		if !isNull(raw) {
			if jsonKind(raw) != "dict" && jsonKind(raw) != "bool" {
				return p, validation("json_schema", "invalid_input", "json_schema must be a JSON Schema object or null.")
			}
			if _, err := runs.CompileSchema(raw); err != nil {
				return p, err // a *store.ValidationError with a fixed text
			}
			schema = append(json.RawMessage(nil), raw...)
		}
		p.JSONSchema = &schema
	}
	return p, nil
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	p := parsePage(r)
	tasks, total, err := s.store.ListTasks(r.Context(), projectOf(r), p.limit, p.offset)
	if err != nil {
		return err
	}
	out := make([]*taskBody, len(tasks))
	for i := range tasks {
		out[i] = renderTask(&tasks[i], s.logLink(r))
	}
	writeJSON(w, http.StatusOK, listBody(r, p, total, out))
	return nil
}

func (s *Server) createTask(w http.ResponseWriter, r *http.Request) error {
	f, _, err := decodeRequest(r)
	if err != nil {
		return err
	}
	p, err := taskFields(f, true)
	if err != nil {
		return err
	}
	nt := store.NewTask{Title: *p.Title, OriginProduct: "user_created"}
	if p.Description != nil {
		nt.Description = *p.Description
	}
	if p.OriginProduct != nil {
		nt.OriginProduct = *p.OriginProduct
	}
	if p.Repository != nil {
		nt.Repository = *p.Repository
	}
	if p.JSONSchema != nil {
		nt.JSONSchema = *p.JSONSchema
	}
	t, err := s.store.CreateTask(r.Context(), projectOf(r), nt)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, renderTask(t, s.logLink(r)))
	return nil
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	t, err := s.store.GetTask(r.Context(), projectOf(r), id)
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderTask(t, s.logLink(r)))
	return nil
}

func (s *Server) updateTask(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	f, _, err := decodeRequest(r)
	if err != nil {
		return err
	}
	p, err := taskFields(f, false)
	if err != nil {
		return err
	}
	t, err := s.store.UpdateTask(r.Context(), projectOf(r), id, p)
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderTask(t, s.logLink(r)))
	return nil
}

func (s *Server) deleteTask(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	if err := s.store.DeleteTask(r.Context(), projectOf(r), id); errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	} else if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// runTask creates a queued run and answers with the task and its latest_run.
func (s *Server) runTask(w http.ResponseWriter, r *http.Request) error {
	id, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	if _, err := readBody(r); err != nil {
		return err
	}
	_, err = s.runs.CreateRun(r.Context(), projectOf(r), id, store.NewRun{Status: store.StatusQueued})
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	}
	if err != nil {
		return err
	}
	t, err := s.store.GetTask(r.Context(), projectOf(r), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, renderTask(t, s.logLink(r)))
	return nil
}
