package rest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"

	"runhub/store"
	"runhub/store/runs"
)

// maxTaskSearchLen caps the task list's `search`, in characters: a search
// is a phrase a person types into the app's search box, and every task's
// title and description are scanned for it, so an unbounded needle would
// only make each comparison dearer. 200 holds any title (the app's derived
// titles are 80) with room to spare.
const maxTaskSearchLen = 200

// maxTaskSummaryIDs caps the ids of one tasks/summaries request: the app
// asks for the summaries of the tasks it shows, one list page at a time,
// and a page holds at most maxPageLimit tasks.
const maxTaskSummaryIDs = maxPageLimit

// taskQuery parses the task list's filters (PostHog's query parameters).
// An empty value does not filter, as with DRF's filters; a value of the
// wrong form is 400 naming the parameter, never an empty list.
func taskQuery(r *http.Request, p page) (store.TaskQuery, error) {
	q := store.TaskQuery{Limit: p.limit, Offset: p.offset}
	v := r.URL.Query()
	get := func(name string) (string, error) {
		s := strings.TrimSpace(v.Get(name))
		if !utf8.ValidString(s) {
			return "", validation(name, "invalid_input", "Not valid UTF-8.")
		}
		return s, nil
	}
	if s, err := get("repository"); err != nil {
		return q, err
	} else if s != "" {
		repo := strings.ToLower(s) // stored lower-cased
		q.Repository = &repo
	}
	if s, err := get("origin_product"); err != nil {
		return q, err
	} else if s != "" {
		if !runs.ValidOriginProduct(s) {
			return q, validation("origin_product", "invalid_choice", fmt.Sprintf("Select a valid choice. %q is not one of the available choices.", s))
		}
		q.OriginProduct = &s
	}
	if s, err := get("created_by"); err != nil {
		return q, err
	} else if s != "" {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return q, validation("created_by", "invalid", "Enter a number.")
		}
		q.CreatedBy = &id
	}
	if s, err := get("status"); err != nil {
		return q, err
	} else if s != "" {
		if !store.ValidStatus(s) {
			return q, validation("status", "invalid_choice", fmt.Sprintf("Select a valid choice. %q is not one of the available choices.", s))
		}
		q.Status = &s
	}
	if s, err := get("search"); err != nil {
		return q, err
	} else if utf8.RuneCountInString(s) > maxTaskSearchLen {
		return q, validation("search", "max_length", fmt.Sprintf("Ensure search has no more than %d characters.", maxTaskSearchLen))
	} else {
		q.Search = s
	}
	for _, b := range []struct {
		name string
		dst  **bool
	}{{"archived", &q.Archived}, {"internal", &q.Internal}} {
		s, err := get(b.name)
		if err != nil {
			return q, err
		}
		if s == "" {
			continue
		}
		var v bool
		switch s {
		case "true", "True", "1":
			v = true
		case "false", "False", "0":
		default:
			return q, validation(b.name, "invalid", "Enter a valid boolean: true or false.")
		}
		*b.dst = &v
	}
	if s, err := get("ordering"); err != nil {
		return q, err
	} else if s != "" {
		q.Ordering = s
		if _, ok := q.OrderOf(); !ok {
			names := make([]string, 0, len(store.TaskOrderings))
			for n := range store.TaskOrderings {
				names = append(names, n)
			}
			slices.Sort(names)
			return q, validation("ordering", "invalid_choice",
				fmt.Sprintf("Select a valid choice. %q is not one of the available choices: %s.", s, strings.Join(names, ", ")))
		}
	}
	return q, nil
}

// taskSummary is one element of tasks/summaries: what a task list row
// shows, without the run's state, output and artifacts.
type taskSummary struct {
	ID            string          `json:"id"`
	TaskNumber    int64           `json:"task_number"`
	Slug          string          `json:"slug"`
	Title         string          `json:"title"`
	OriginProduct string          `json:"origin_product"`
	Repository    *string         `json:"repository"`
	CreatedBy     *createdByBody  `json:"created_by"`
	Internal      bool            `json:"internal"`
	Archived      bool            `json:"archived"`
	CreatedAt     apiTime         `json:"created_at"`
	UpdatedAt     apiTime         `json:"updated_at"`
	LatestRun     *runSummaryBody `json:"latest_run"`
}

// runSummaryBody is the latest run of a task summary.
type runSummaryBody struct {
	ID          string   `json:"id"`
	Status      string   `json:"status"`
	Stage       *string  `json:"stage"`
	Environment string   `json:"environment"`
	CreatedAt   apiTime  `json:"created_at"`
	UpdatedAt   apiTime  `json:"updated_at"`
	CompletedAt *apiTime `json:"completed_at"`
}

// taskSummaries answers POST tasks/summaries/ {"ids": [...]}: the
// summaries of those of the ids that are live tasks of the project, newest
// first; other ids (unknown, deleted, another project's) are left out.
func (s *Server) taskSummaries(w http.ResponseWriter, r *http.Request) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	f, err := runs.ParseObject(body)
	if err != nil {
		return err
	}
	var raw []string
	if _, ok := f["ids"]; !ok {
		return validation("ids", "required", "This field is required.")
	}
	if err := json.Unmarshal(f["ids"], &raw); err != nil || raw == nil {
		return validation("ids", "not_a_list", "Expected a list of task ids.")
	}
	if len(raw) > maxTaskSummaryIDs {
		return validation("ids", "max_length", fmt.Sprintf("Ensure this field has no more than %d elements.", maxTaskSummaryIDs))
	}
	ids := make([]string, 0, len(raw))
	for _, v := range raw {
		id, err := uuid.Parse(v)
		if err != nil || len(v) != 36 {
			return validation("ids", "invalid", "Each id must be a valid UUID.")
		}
		ids = append(ids, id.String())
	}
	out := []taskSummary{}
	if len(ids) > 0 {
		tasks, _, err := s.store.ListTasks(r.Context(), projectOf(r), store.TaskQuery{IDs: ids, Limit: len(ids)})
		if err != nil {
			return err
		}
		for i := range tasks {
			out = append(out, summarise(&tasks[i]))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func summarise(t *store.Task) taskSummary {
	sum := taskSummary{
		ID: t.ID, TaskNumber: t.Number, Slug: t.Slug, Title: t.Title, OriginProduct: t.OriginProduct,
		Repository: t.Repository, CreatedBy: createdBy(t.CreatedBy), Internal: t.Internal, Archived: t.Archived,
		CreatedAt: apiTime(t.CreatedAt), UpdatedAt: apiTime(t.UpdatedAt),
	}
	if run := t.LatestRun; run != nil {
		sum.LatestRun = &runSummaryBody{ID: run.ID, Status: run.Status, Stage: run.Stage, Environment: run.Environment,
			CreatedAt: apiTime(run.CreatedAt), UpdatedAt: apiTime(run.UpdatedAt), CompletedAt: optTime(run.CompletedAt)}
		sum.LatestRun.CompletedAt = optTime(run.CompletedAt)
	}
	return sum
}

// createdByBody is a task's created_by: PostHog's is the creating user
// ({"id", ...}); runhub's is the API key that created the task, by id, so
// a client reading created_by.id and filtering ?created_by= with it works.
type createdByBody struct {
	ID int64 `json:"id"`
}

func createdBy(id *int64) *createdByBody {
	if id == nil {
		return nil
	}
	return &createdByBody{ID: *id}
}
