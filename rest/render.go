package rest

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"time"

	"runhub/store"
)

// apiTime renders a timestamp in the contract's format.
type apiTime time.Time

func (t apiTime) MarshalJSON() ([]byte, error) {
	return t.appendJSON(make([]byte, 0, len(store.TimeFormat)+2)), nil
}

func (t apiTime) appendJSON(dst []byte) []byte {
	dst = append(dst, '"')
	dst = time.Time(t).UTC().AppendFormat(dst, store.TimeFormat)
	return append(dst, '"')
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

// MarshalJSON encodes the run as encoding/json encodes runBody's fields
// (appendJSON), so that a run inside a task or a list reads the same.
func (b *runBody) MarshalJSON() ([]byte, error) { return b.appendJSON(nil), nil }

// appendJSON appends the run object as encoding/json would encode the
// struct's fields (their order and names, null for nil, map keys sorted,
// strings and raw values with encoding/json's escaping), byte for byte
// (TestRunBodyJSON), without reflection: a run is the answer of every run
// mutation, an agent's append_log among them. Its raw values are the
// store's, which keeps only valid JSON.
func (b *runBody) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, b.ID)
	dst = append(dst, `,"task":`...)
	dst = appendJSONString(dst, b.Task)
	dst = append(dst, `,"team":`...)
	dst = strconv.AppendInt(dst, b.Team, 10)
	dst = append(dst, `,"stage":`...)
	dst = appendJSONOptString(dst, b.Stage)
	dst = append(dst, `,"branch":`...)
	dst = appendJSONOptString(dst, b.Branch)
	dst = append(dst, `,"status":`...)
	dst = appendJSONString(dst, b.Status)
	dst = append(dst, `,"environment":`...)
	dst = appendJSONString(dst, b.Environment)
	dst = append(dst, `,"log_url":`...)
	dst = appendJSONOptString(dst, b.LogURL)
	dst = append(dst, `,"error_message":`...)
	dst = appendJSONOptString(dst, b.ErrorMessage)
	dst = append(dst, `,"output":`...)
	dst = appendJSONRawMap(dst, b.Output)
	dst = append(dst, `,"state":`...)
	dst = appendJSONRawMap(dst, b.State)
	dst = append(dst, `,"artifacts":`...)
	if b.Artifacts == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, v := range b.Artifacts {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONRaw(dst, v)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"created_at":`...)
	dst = b.CreatedAt.appendJSON(dst)
	dst = append(dst, `,"updated_at":`...)
	dst = b.UpdatedAt.appendJSON(dst)
	dst = append(dst, `,"completed_at":`...)
	if b.CompletedAt == nil {
		dst = append(dst, "null"...)
	} else {
		dst = b.CompletedAt.appendJSON(dst)
	}
	return append(dst, '}')
}

// appendJSONString appends s as encoding/json encodes a string. Printable
// ASCII is written here (", \\ escaped with a backslash, <, > and & as
// \u00XX, as encoding/json does for HTML safety: a log_url's & among
// them); a string with control characters or non-ASCII is left to
// encoding/json, whose rules for those then hold without being written
// twice.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			q, _ := json.Marshal(s) // a string always encodes
			return append(dst, q...)
		}
	}
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', c)
			start = i + 1
		case '<', '>', '&':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			start = i + 1
		}
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendJSONOptString(dst []byte, s *string) []byte {
	if s == nil {
		return append(dst, "null"...)
	}
	return appendJSONString(dst, *s)
}

// appendJSONRaw appends a raw JSON value as encoding/json does: compacted,
// with <, >, &, U+2028 and U+2029 escaped. A value with none of the bytes
// that compaction or escaping would change is copied as it is.
func appendJSONRaw(dst []byte, v json.RawMessage) []byte {
	if v == nil {
		return append(dst, "null"...)
	}
	if !needsCompactOrEscape(v) {
		return append(dst, v...)
	}
	var compact, escaped bytes.Buffer
	if json.Compact(&compact, v) != nil {
		// Not JSON: the store keeps none, but should one appear it is
		// null rather than a broken answer.
		return append(dst, "null"...)
	}
	json.HTMLEscape(&escaped, compact.Bytes())
	return append(dst, escaped.Bytes()...)
}

// needsCompactOrEscape reports whether v holds whitespace (which
// compaction drops), <, > or & or the first byte of U+2028 and U+2029
// (which encoding/json escapes).
func needsCompactOrEscape(v []byte) bool {
	for _, c := range v {
		switch c {
		case ' ', '\t', '\r', '\n', '<', '>', '&', 0xe2:
			return true
		}
	}
	return false
}

// appendJSONRawMap appends m as encoding/json encodes a map of raw values:
// keys sorted bytewise.
func appendJSONRawMap(dst []byte, m map[string]json.RawMessage) []byte {
	if m == nil {
		return append(dst, "null"...)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		dst = appendJSONRaw(dst, m[k])
	}
	return append(dst, '}')
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
