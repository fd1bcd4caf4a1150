package rest

import (
	"encoding/json"
	"time"

	"runhub/store"
)

// apiTime renders a timestamp in the contract's format.
type apiTime time.Time

func (t apiTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + store.FormatTime(time.Time(t)) + `"`), nil
}

func optTime(t *time.Time) *apiTime {
	if t == nil {
		return nil
	}
	v := apiTime(*t)
	return &v
}

// runBody is the contract's run object.
type runBody struct {
	ID           string                     `json:"id"`
	Task         string                     `json:"task"`
	Team         int64                      `json:"team"`
	Stage        *string                    `json:"stage"`
	Branch       *string                    `json:"branch"`
	Status       string                     `json:"status"`
	Environment  string                     `json:"environment"`
	LogURL       *string                    `json:"log_url"`
	ErrorMessage *string                    `json:"error_message"`
	Output       map[string]json.RawMessage `json:"output"`
	State        map[string]json.RawMessage `json:"state"`
	Artifacts    []json.RawMessage          `json:"artifacts"`
	CreatedAt    apiTime                    `json:"created_at"`
	UpdatedAt    apiTime                    `json:"updated_at"`
	CompletedAt  *apiTime                   `json:"completed_at"`
}

// linkFunc gives a run its log_url (Server.logLink); it may return nil.
type linkFunc = func(*store.Run) *string

// renderRun maps a stored run to its API shape.
func renderRun(r *store.Run, link linkFunc) *runBody {
	if r == nil {
		return nil
	}
	b := &runBody{
		ID: r.ID, Task: r.TaskID, Team: r.ProjectID, Stage: r.Stage, Branch: r.Branch, Status: r.Status,
		Environment: r.Environment, ErrorMessage: r.ErrorMessage, Output: r.Output, State: r.State,
		Artifacts: r.Artifacts, CreatedAt: apiTime(r.CreatedAt), UpdatedAt: apiTime(r.UpdatedAt), CompletedAt: optTime(r.CompletedAt),
		LogURL: link(r),
	}
	if b.State == nil {
		b.State = map[string]json.RawMessage{}
	}
	if b.Artifacts == nil {
		b.Artifacts = []json.RawMessage{}
	}
	return b
}

func renderRuns(rs []store.Run, link linkFunc) []*runBody {
	out := make([]*runBody, len(rs))
	for i := range rs {
		out[i] = renderRun(&rs[i], link)
	}
	return out
}

// taskBody is the contract's task object.
type taskBody struct {
	ID            string          `json:"id"`
	TaskNumber    int64           `json:"task_number"`
	Slug          string          `json:"slug"`
	Title         string          `json:"title"`
	Description   string          `json:"description"`
	OriginProduct string          `json:"origin_product"`
	Repository    *string         `json:"repository"`
	JSONSchema    json.RawMessage `json:"json_schema"`
	CreatedBy     *createdByBody  `json:"created_by"`
	Internal      bool            `json:"internal"`
	Archived      bool            `json:"archived"`
	ArchivedAt    *apiTime        `json:"archived_at"`
	CreatedAt     apiTime         `json:"created_at"`
	UpdatedAt     apiTime         `json:"updated_at"`
	LatestRun     *runBody        `json:"latest_run"`
}

func renderTask(t *store.Task, link linkFunc) *taskBody {
	b := &taskBody{
		ID: t.ID, TaskNumber: t.Number, Slug: t.Slug, Title: t.Title, Description: t.Description,
		OriginProduct: t.OriginProduct, Repository: t.Repository, JSONSchema: t.JSONSchema,
		CreatedBy: createdBy(t.CreatedBy), Internal: t.Internal, Archived: t.Archived, ArchivedAt: optTime(t.ArchivedAt),
		CreatedAt: apiTime(t.CreatedAt), UpdatedAt: apiTime(t.UpdatedAt), LatestRun: renderRun(t.LatestRun, link),
	}
	if b.JSONSchema == nil {
		b.JSONSchema = json.RawMessage("null")
	}
	return b
}
