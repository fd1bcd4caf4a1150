package rest

import (
	"errors"
	"net/http"

	"runhub/store"
	"runhub/store/runs"
)

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	p := parsePage(r)
	q, err := taskQuery(r, p)
	if err != nil {
		return err
	}
	tasks, total, err := s.store.ListTasks(r.Context(), projectOf(r), q)
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
	body, err := readBody(r)
	if err != nil {
		return err
	}
	nt, err := runs.DecodeNewTask(body)
	if err != nil {
		return err
	}
	key := r.Context().Value(keyCtx).(*store.APIKey)
	nt.CreatedBy = &key.ID
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
	body, err := readBody(r)
	if err != nil {
		return err
	}
	p, err := runs.DecodeTaskPatch(body)
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
