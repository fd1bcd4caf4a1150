package store

import "time"

// TaskQuery selects and orders a page of a project's live tasks (the task
// list's filters, as PostHog's desktop app sends them). A nil or empty
// field does not filter.
type TaskQuery struct {
	Repository    *string // exact, as stored (lower-cased org/repo)
	OriginProduct *string
	CreatedBy     *int64  // the id of the API key that created the task
	Status        *string // the status of the task's latest run; a task without runs never matches
	// Search matches tasks whose title or description contains it, ignoring
	// ASCII case (the backends fold other letters as their SQL does).
	Search   string
	Archived *bool
	Internal *bool
	// IDs keeps only these tasks (tasks/summaries); nil keeps every task.
	IDs []string
	// Ordering is one of TaskOrderings; "" is DefaultTaskOrdering.
	Ordering string
	Limit    int // > 0
	Offset   int
}

// DefaultTaskOrdering lists the newest tasks first, as the task list always has.
const DefaultTaskOrdering = "-created_at"

// TaskOrder says how a backend sorts for one ordering: by Column (a column
// of the tasks table, the same name in every backend), descending or not,
// then always by creation, newest first, so that pages never overlap or
// skip a task when many share a value.
type TaskOrder struct {
	Column string
	Desc   bool
}

// TaskOrderings are the accepted values of the task list's `ordering`:
// the fields a client can sort by, ascending or (with "-") descending.
// created_at sorts by creation order (seq), which is what created_at
// records without ever tying.
var TaskOrderings = map[string]TaskOrder{
	"created_at":   {"seq", false},
	"-created_at":  {"seq", true},
	"updated_at":   {"updated_at", false},
	"-updated_at":  {"updated_at", true},
	"title":        {"title", false},
	"-title":       {"title", true},
	"task_number":  {"task_number", false},
	"-task_number": {"task_number", true},
}

// OrderOf returns the sort of q.Ordering ("" is DefaultTaskOrdering) and
// whether it is one of TaskOrderings.
func (q *TaskQuery) OrderOf() (TaskOrder, bool) {
	o := q.Ordering
	if o == "" {
		o = DefaultTaskOrdering
	}
	ord, ok := TaskOrderings[o]
	return ord, ok
}

// ApplyArchived sets t.Archived to *archived (nil: no change), stamping
// ArchivedAt with now when it turns true and clearing it when it turns
// false; archiving an archived task keeps its first time.
func ApplyArchived(t *Task, archived *bool, now time.Time) {
	if archived == nil || *archived == t.Archived {
		return
	}
	t.Archived = *archived
	if t.Archived {
		t.ArchivedAt = &now
	} else {
		t.ArchivedAt = nil
	}
}
