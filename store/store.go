// Package store holds runhub's domain types (projects, API keys, tasks, runs
// and their event log) and the Store interface that every backend implements.
//
// Guarantees every implementation must give:
//   - Each mutation of a run (create, PATCH, set_output, append_log) writes its
//     row change and its events in one transaction that assigns the run's next
//     sequence numbers: seq is 1, 2, 3, ... per run, with no gap and no reuse.
//     A reader therefore never sees a run row without its events, or events
//     without the row change that caused them.
//   - Entries of one append are stored contiguously and in request order.
//   - A mutation carrying an Idempotency key that was already applied to the
//     same run stores nothing and returns the snapshot recorded the first time
//     (RunSnapshot).
//   - A lock the backend cannot take in time is reported as ErrBusy, and a
//     store that cannot write now as ErrUnavailable, never as a driver error
//     that callers would have to read.
//
// The rules of a run mutation (create defaults, PATCH merge, completed_at,
// the event bodies and their seqs) are pure functions of this package
// (rules.go): a backend loads the run, applies one, and writes the row and
// the events it returned in one transaction.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of the domain; rest maps them to HTTP in one place.
var (
	// ErrNotFound: the project, task, run or key does not exist (in the scope asked).
	ErrNotFound = errors.New("not found")
	// ErrForbidden: the caller is authenticated but may not act on this object.
	ErrForbidden = errors.New("forbidden")
	// ErrIdempotencyMismatch: an Idempotency-Key was reused with a different request.
	ErrIdempotencyMismatch = errors.New("idempotency key reused with a different request")
	// ErrUnavailable: the store cannot write at the moment (read-only file
	// or mount, full disk, I/O error): the request was sound and may
	// succeed later, so it is a 503, not a 500.
	ErrUnavailable = errors.New("store unavailable")
	// ErrBusy: the store could not take its lock in time (SQLite's
	// SQLITE_BUSY, "database is locked", once the busy timeout ran out:
	// another process held the write lock). It passes by itself, so it
	// is a 503 the client retries shortly, not a 500.
	ErrBusy = errors.New("store busy")
)

// ValidationError is a domain rule broken by a request; Attr names the field.
type ValidationError struct {
	Attr   string // field name, "" when the error concerns no single field
	Code   string // machine code, e.g. "invalid_input", "invalid_choice"
	Detail string // human sentence
}

func (e *ValidationError) Error() string {
	if e.Attr == "" {
		return e.Detail
	}
	return fmt.Sprintf("%s: %s", e.Attr, e.Detail)
}

// Invalid builds a ValidationError with code "invalid_input".
func Invalid(attr, format string, args ...any) *ValidationError {
	return &ValidationError{Attr: attr, Code: "invalid_input", Detail: fmt.Sprintf(format, args...)}
}

// Run statuses. The last three are terminal.
const (
	StatusNotStarted = "not_started"
	StatusQueued     = "queued"
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"
	StatusFailed     = "failed"
	StatusCancelled  = "cancelled"
)

// ValidStatus reports whether s is one of the run statuses.
func ValidStatus(s string) bool {
	switch s {
	case StatusNotStarted, StatusQueued, StatusInProgress, StatusCompleted, StatusFailed, StatusCancelled:
		return true
	}
	return false
}

// IsTerminal reports whether a run in status s has finished.
func IsTerminal(s string) bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Environments of a run.
const (
	EnvCloud = "cloud"
	EnvLocal = "local"
)

// Scopes of API keys. ScopeWrite implies ScopeRead; ScopeAll allows everything.
const (
	ScopeRead  = "task:read"
	ScopeWrite = "task:write"
	ScopeAll   = "*"
)

// Project is a tenant; tasks, runs and keys belong to projects.
type Project struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// SlackChannels are the Slack channel ids the Slack relay may post to
	// for this project's runs, set by the operator (projects update
	// --slack-channels). state.slack_thread is written by any key with
	// task:write, so it cannot be trusted to pick a channel by itself. Empty
	// (the default, never nil) means the project may post nowhere: a bot
	// reaches every channel it was invited to, and a project must not reach
	// them by default.
	SlackChannels []string `json:"slack_channels"`
}

// AllowsSlackChannel reports whether the operator allowed the project's runs
// to post to channel. The comparison is exact: Slack channel ids are
// case-sensitive upper-case ids such as C024BE91L.
func (p *Project) AllowsSlackChannel(channel string) bool {
	for _, c := range p.SlackChannels {
		if c == channel {
			return true
		}
	}
	return false
}

// APIKey is a personal API key. Only a hash of its secret is stored.
type APIKey struct {
	ID          int64      `json:"id"`
	Label       string     `json:"label"`
	Prefix      string     `json:"prefix"` // first characters of the secret, for people to recognise it
	Scopes      []string   `json:"scopes"`
	AllProjects bool       `json:"all_projects"`
	Projects    []int64    `json:"projects"`
	CreatedAt   time.Time  `json:"created_at"`
	RevokedAt   *time.Time `json:"revoked_at"`
}

// HasScope reports whether the key grants scope (task:write implies task:read).
func (k *APIKey) HasScope(scope string) bool {
	for _, s := range k.Scopes {
		if s == ScopeAll || s == scope || (scope == ScopeRead && s == ScopeWrite) {
			return true
		}
	}
	return false
}

// CanReach reports whether the key may act on project id.
func (k *APIKey) CanReach(project int64) bool {
	if k.AllProjects {
		return true
	}
	for _, p := range k.Projects {
		if p == project {
			return true
		}
	}
	return false
}

// RevocationMark summarises the revoked API keys: how many there are and
// when the newest was revoked. Revocation is permanent, so the count only
// grows and any revocation changes the mark, even one stamped by a clock
// behind the newest (another machine's `keys revoke`).
type RevocationMark struct {
	Count  int64
	Newest time.Time // zero when no key is revoked
}

// Same reports whether two marks describe the same revocations.
func (m RevocationMark) Same(o RevocationMark) bool {
	return m.Count == o.Count && m.Newest.Equal(o.Newest)
}

// NewAPIKey describes a key to create.
type NewAPIKey struct {
	Label       string
	Prefix      string
	Hash        []byte
	Scopes      []string
	AllProjects bool
	Projects    []int64
}

// Task is the parent of runs.
type Task struct {
	ID            string          `json:"id"`
	ProjectID     int64           `json:"team"`
	Number        int64           `json:"task_number"`
	Slug          string          `json:"slug"`
	Title         string          `json:"title"`
	Description   string          `json:"description"`
	OriginProduct string          `json:"origin_product"`
	Repository    *string         `json:"repository"`
	JSONSchema    json.RawMessage `json:"json_schema"` // nil when the task has none
	// CreatedBy is the id of the API key that created the task; nil for
	// tasks created before runhub recorded it.
	CreatedBy  *int64     `json:"created_by"`
	Internal   bool       `json:"internal"`    // made by a product for itself, not by a person
	Archived   bool       `json:"archived"`    // hidden from the usual list by the client, kept
	ArchivedAt *time.Time `json:"archived_at"` // when archived became true; nil while not archived
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	LatestRun  *Run       `json:"latest_run"`
}

// NewTask holds the validated fields of a task to create.
type NewTask struct {
	Title         string
	Description   string
	OriginProduct string
	Repository    *string
	JSONSchema    json.RawMessage
	CreatedBy     *int64 // the API key creating it
	Internal      bool
}

// TaskPatch holds the fields of a task PATCH; a nil field is left unchanged.
type TaskPatch struct {
	Title         *string
	Description   *string
	OriginProduct *string
	Repository    **string
	JSONSchema    *json.RawMessage // pointer to nil clears the schema
	Internal      *bool
	// Archived sets archived; archived_at becomes now when it turns true
	// and nil when it turns false, and is kept when it does not change.
	Archived *bool
}

// Run is one execution of a task.
type Run struct {
	ID           string                     `json:"id"`
	TaskID       string                     `json:"task"`
	ProjectID    int64                      `json:"team"`
	Stage        *string                    `json:"stage"`
	Branch       *string                    `json:"branch"`
	Status       string                     `json:"status"`
	Environment  string                     `json:"environment"`
	ErrorMessage *string                    `json:"error_message"`
	Output       map[string]json.RawMessage `json:"output"` // nil is JSON null
	State        map[string]json.RawMessage `json:"state"`  // never nil
	Artifacts    []json.RawMessage          `json:"artifacts"`
	CreatedAt    time.Time                  `json:"created_at"`
	UpdatedAt    time.Time                  `json:"updated_at"`
	CompletedAt  *time.Time                 `json:"completed_at"`
	LastSeq      int64                      `json:"last_seq"`  // highest seq of the run's event log
	LogCount     int64                      `json:"log_count"` // stored log entries
}

// Ref is the run's address.
func (r *Run) Ref() RunRef { return RunRef{ProjectID: r.ProjectID, TaskID: r.TaskID, RunID: r.ID} }

// RunRef names a run inside its project and task; every lookup checks all three.
type RunRef struct {
	ProjectID int64
	TaskID    string
	RunID     string
}

// NewRun holds the validated fields of a run to create.
type NewRun struct {
	Stage        *string
	Branch       *string
	Status       string // "" means not_started
	Environment  string // "" means cloud
	ErrorMessage *string
	Output       map[string]json.RawMessage
	State        map[string]json.RawMessage
}

// RunPatch holds a validated PATCH. Nil pointers leave a field unchanged.
type RunPatch struct {
	Status          *string
	Stage           **string
	Branch          **string
	ErrorMessage    **string
	Environment     *string
	ClearOutput     bool                       // "output": null
	Output          map[string]json.RawMessage // merged shallowly into the stored output
	State           map[string]json.RawMessage // merged shallowly into the stored state
	StateRemoveKeys []string
	// OnlyIfNonTerminal: a terminal run is left unchanged (PostHog's
	// only_if_non_terminal: a late PATCH to a finished run changes nothing).
	OnlyIfNonTerminal bool
	// RequireStatus, when set, applies the PATCH only to a run in that
	// status (else a ValidationError); never decoded from a body, it is
	// set by the server's own transitions (start).
	RequireStatus string
	// QueueMessage, when set, is a user_message's params appended to the
	// run's steering queue (MaxQueuedUserMessages applies) in the PATCH's
	// own transaction, only when the PATCH applies: start's first message
	// is queued exactly when the run leaves not_started, never without
	// it and never twice. Never decoded from a body.
	QueueMessage json.RawMessage
}

// Idempotency identifies a request that must be applied at most once per run.
type Idempotency struct {
	// Namespace says who chose Key (IdemREST or IdemAgent). The store keys
	// a request by StoredKey, Namespace+Key, so a key a REST client picks
	// can never name an agent's batch, nor the reverse.
	Namespace   string
	Key         string // the caller's key (its length is validated, not Namespace's)
	RequestHash []byte // a digest of the request; a reused key with another digest is refused
}

// Idempotency key namespaces: every stored key of a REST request starts
// with IdemREST, every key of an agent batch with a session with
// IdemAgent. Keys stored before namespaces existed have no prefix: a REST
// request retried across that upgrade is applied again, and an old
// agent's batch without a session keeps its key "agent-batch:N" (no
// namespace), which no REST key can equal.
const (
	IdemREST  = "rest:"
	IdemAgent = "agent:"
)

// StoredKey is the key the store records and looks up: Namespace + Key.
func (i *Idempotency) StoredKey() string { return i.Namespace + i.Key }

// Relay statuses.
const (
	RelayPending = "pending"
	RelaySent    = "sent"
	RelayFailed  = "failed"
)

// Relay is one message of the Slack relay's outbox.
type Relay struct {
	ID        string
	RunID     string
	Channel   string
	ThreadTS  string
	Text      string
	Status    string
	Attempts  int
	LastError string
	NextAt    time.Time
	CreatedAt time.Time
}

// Event kinds in a run's log.
const (
	KindLog      = "log"                 // a log entry from append_log
	KindRunState = "task_run_state"      // a change of the run row
	KindArtifact = "artifact"            // an uploaded artifact
	KindSystem   = "system"              // agent_connected and the like
	KindChunk    = "agent_message_chunk" // ephemeral: published, never stored
)

// Event is one element of a run's stream. Seq is 0 for ephemeral events.
type Event struct {
	RunID string
	Seq   int64
	Kind  string
	Type  string          // the entry's event type (see LogEntry.Type)
	Data  json.RawMessage // the JSON object delivered to clients
}

// MutationResult is what a run mutation returns: the run after it, the
// events it stored (to publish after the commit), and whether it was an
// idempotent replay that stored nothing.
type MutationResult struct {
	Run      *Run
	Events   []Event
	Replayed bool
}

// ReadPageBytes caps the entry bytes that one session_logs page or one /ws
// history reply reads from the store. Entries may be 1 MiB each and a page
// may ask for 5,000 of them: the cap, not the row limit, is what keeps a
// request's memory at a few MiB. 2 MiB is the page cut PostHog adopted after
// huge session_logs pages timed out, and it is what clients already page by.
const ReadPageBytes = 2 << 20

// LogQuery filters a run's stored log entries (session_logs).
type LogQuery struct {
	After        *time.Time // only entries whose timestamp is strictly later
	EventTypes   []string
	ExcludeTypes []string
	AfterSeq     int64
	Limit        int
	Offset       int
	// MaxBytes stops the page before the entry that would take its entries
	// past this many bytes; the store stops reading there, so no more than
	// MaxBytes plus one entry is ever held. At least one entry is returned
	// when any matches, so a reader always progresses. 0 means ReadPageBytes.
	MaxBytes int
}

// LogPage is one page of session_logs.
type LogPage struct {
	Entries  []json.RawMessage
	Total    int64 // stored entries of the run
	Matching int64 // entries matching the filters
}

// Secrets is a store that keeps the secrets every node must agree on (the
// token signing key, the link signing secret), so that nodes sharing it
// need nothing else in common. A store without it (SQLite, one data
// directory) leaves them to files in the data directory.
type Secrets interface {
	// Secret returns the secret named name, first storing what generate
	// makes when there is none; of nodes racing to create it, one wins and
	// all get its value.
	Secret(ctx context.Context, name string, generate func() ([]byte, error)) ([]byte, error)
}

// Store is the source of truth of runhub. Implementations are safe for
// concurrent use.
type Store interface {
	Close() error
	Ping(ctx context.Context) error

	CreateProject(ctx context.Context, name string) (*Project, error)
	// Bootstrap creates the first project (named name) and the key k in one
	// transaction when the store holds no project, serialised against
	// every other node doing the same at once; it writes nothing and
	// reports false when a project exists.
	Bootstrap(ctx context.Context, name string, k NewAPIKey) (created bool, err error)
	GetProject(ctx context.Context, id int64) (*Project, error)
	ListProjects(ctx context.Context) ([]Project, error)
	// SetProjectSlackChannels replaces the project's Slack channel
	// allow-list (nil or empty: the project may post nowhere) and returns
	// the project after the change, or ErrNotFound.
	SetProjectSlackChannels(ctx context.Context, id int64, channels []string) (*Project, error)

	CreateAPIKey(ctx context.Context, k NewAPIKey) (*APIKey, error)
	// APIKeyByHash returns the unrevoked key with that hash, or ErrNotFound.
	APIKeyByHash(ctx context.Context, hash []byte) (*APIKey, error)
	ListAPIKeys(ctx context.Context) ([]APIKey, error)
	RevokeAPIKey(ctx context.Context, id int64) error
	// RevocationMark is a cheap summary of the revoked keys that changes
	// with every revocation. `keys revoke` runs in another process and
	// writes the store directly, so every node polls this (every second or
	// two) to learn of revocations without a broker, and calls
	// RevokedAPIKeyIDs only when the mark changed.
	RevocationMark(ctx context.Context) (RevocationMark, error)
	// RevokedAPIKeyIDs returns the ids of every revoked key, ascending.
	RevokedAPIKeyIDs(ctx context.Context) ([]int64, error)

	CreateTask(ctx context.Context, project int64, t NewTask) (*Task, error)
	GetTask(ctx context.Context, project int64, id string) (*Task, error)
	// ListTasks returns the page of the project's live tasks that q selects,
	// in q's order, and how many tasks match q in all. q.Ordering must be
	// one of TaskOrderings (callers check it; a backend refuses others).
	ListTasks(ctx context.Context, project int64, q TaskQuery) ([]Task, int64, error)
	UpdateTask(ctx context.Context, project int64, id string, p TaskPatch) (*Task, error)
	DeleteTask(ctx context.Context, project int64, id string) error

	CreateRun(ctx context.Context, project int64, task string, r NewRun) (*MutationResult, error)
	GetRun(ctx context.Context, ref RunRef) (*Run, error)
	// RunByID finds a run of a live task by id alone; callers check that
	// the caller may reach its project.
	RunByID(ctx context.Context, id string) (*Run, error)
	ListRuns(ctx context.Context, project int64, task string, limit, offset int) ([]Run, int64, error)
	UpdateRun(ctx context.Context, ref RunRef, p RunPatch, idem *Idempotency) (*MutationResult, error)
	SetOutput(ctx context.Context, ref RunRef, output map[string]json.RawMessage, idem *Idempotency) (*MutationResult, error)
	AppendLog(ctx context.Context, ref RunRef, entries []LogEntry, idem *Idempotency) (*MutationResult, error)
	// AddArtifacts appends manifest entries to the run and records one
	// artifact event ({"type": "artifact", "artifact": entry}) per entry, in
	// one transaction.
	AddArtifacts(ctx context.Context, ref RunRef, entries []json.RawMessage) (*MutationResult, error)

	// CreateRelay stores an accepted relay message (status pending).
	CreateRelay(ctx context.Context, r Relay) error
	// DueRelays returns up to limit pending relays whose next_at has come,
	// oldest first.
	DueRelays(ctx context.Context, now time.Time, limit int) ([]Relay, error)
	// UpdateRelay records a relay's status, attempts, last error and next try.
	UpdateRelay(ctx context.Context, r Relay) error
	// GetRelay reads one relay.
	GetRelay(ctx context.Context, id string) (*Relay, error)

	// EnqueueUserMessage appends a user_message (its params, validated by
	// the caller) to the run's queue and returns its id; the node holding
	// the run's agent delivers queued messages to it in id order, each at
	// most once. ErrNotFound when the run is not in ref's live task;
	// ErrQueueFull at MaxQueuedUserMessages waiting.
	EnqueueUserMessage(ctx context.Context, ref RunRef, params json.RawMessage) (int64, error)
	// PendingUserMessages counts the run's queued messages not yet taken.
	PendingUserMessages(ctx context.Context, runID string) (int, error)
	// TakeUserMessage removes the run's oldest queued message and returns
	// it, in one statement, so that of nodes racing for it one gets it (a
	// message taken is a message delivered: never handed out twice);
	// ErrNotFound when none waits.
	TakeUserMessage(ctx context.Context, runID string) (*QueuedMessage, error)
	// RequeueUserMessage puts a taken message back under its own id, so
	// first in line again: it was certainly never written to an agent
	// (the connection ended before the write).
	RequeueUserMessage(ctx context.Context, m *QueuedMessage) error

	// Events returns up to limit (> 0) events of run with seq > after, in
	// order, stopping before the event that would take their data past
	// ReadPageBytes (at least one event is returned when any follows), so a
	// catch-up page of 1 MiB entries never holds hundreds of MiB. A reader
	// asks again after the last seq it got.
	Events(ctx context.Context, runID string, after int64, limit int) ([]Event, error)
	// EventsBefore returns the newest stored events of run with seq <
	// before, at most limit (> 0) of them, in seq order. It stops reading at
	// the event that would take their data past maxBytes (> 0), but returns
	// at least one event when any exists, so a reader paging backwards
	// (before = the first seq returned) always progresses.
	EventsBefore(ctx context.Context, runID string, before int64, limit, maxBytes int) ([]Event, error)
	// QueryLog returns a filtered page of stored log entries; q.Limit must be
	// > 0. The page stops at q.MaxBytes (see LogQuery); Matching still counts
	// every matching entry, so Offset+len(Entries) < Matching means more.
	QueryLog(ctx context.Context, ref RunRef, q LogQuery) (*LogPage, error)
	// StreamLog calls fn with every stored log entry of the run, in order,
	// reading in pages so that a long log is never held in memory whole.
	StreamLog(ctx context.Context, ref RunRef, fn func(entry []byte) error) error

	// IngestState reads the run's ingest sequence (zero for a run that
	// never ingested).
	IngestState(ctx context.Context, ref RunRef) (IngestState, error)
	// IngestEvents applies SequenceIngest to lines under the run's write
	// lock and, in the same transaction, appends the accepted entries to
	// the run's log (as AppendLog does) and advances last_accepted_seq:
	// across nodes and restarts, a sender seq is stored at most once.
	// A conflict is reported in the result, with the lines before it
	// committed.
	IngestEvents(ctx context.Context, ref RunRef, lines []IngestLine) (*IngestResult, error)
	// CompleteIngest applies CompleteIngestRule in one transaction.
	CompleteIngest(ctx context.Context, ref RunRef, finalSeq int64) (*IngestResult, error)
}
