// Package runs is the one path every mutation of a run takes, whoever asks
// for it (a REST client, a sandbox agent, a worker):
//
//	decode + validate → store transaction (row + events + seq) → publish
//
// The decoders of the mutation bodies (DecodeRunPatch, DecodeAppendLog,
// DecodeSetOutput, DecodeCommand, DecodeNewTask, ...) live here too, and
// REST, the sandbox proxy and the hub call them directly: a rule and its
// message are written once, whoever sends the body.
//
// Guarantees: nothing invalid reaches the store (a *store.ValidationError
// names the field instead); events are published only after their
// transaction committed, in seq order, once per mutation; an idempotent replay
// publishes nothing.
//
// Text is UTF-8: an entry, an output or state value, an artifact's name,
// content type or source, or an Idempotency-Key with bytes that are not
// UTF-8 is refused, so stored and published data is always valid UTF-8
// (a browser closes a WebSocket on a text frame that is not). JSON \u
// escapes of lone surrogates ("\ud800") are accepted as they are valid
// JSON text made of ASCII: raw values (entries, output, state) keep them
// as written and every JSON decoder reads them (Go's as U+FFFD, a
// browser's as a lone UTF-16 unit); values decoded into Go strings (names,
// titles, text) already hold U+FFFD in their place.
package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"runhub/store"
)

// Limits of the contract.
const (
	MaxEntries    = 10_000  // log entries per append
	MaxEntryBytes = 1 << 20 // one log entry, compact JSON
	MaxStageLen   = 100
	MaxBranchLen  = 255
	MaxTitleLen   = 255
	MaxIdemKeyLen = 255
)

// Publisher carries committed events to live subscribers: the node's
// broker (hub.Broker), which hands them to every subscribed hub. It must not
// block on slow subscribers. A failure loses nothing: subscribers find the
// events in the store at the next gap.
type Publisher interface {
	Publish(ctx context.Context, runID string, events []store.Event) error
}

// NoPublisher publishes nothing. It is for a store that no hub follows
// (the admin commands, tests of the mutation path alone), chosen
// explicitly: a Service is never without a publisher by default.
type NoPublisher struct{}

// Publish does nothing.
func (NoPublisher) Publish(context.Context, string, []store.Event) error { return nil }

// Config configures a Service. Store and Publisher are required.
type Config struct {
	Store     store.Store
	Publisher Publisher
	Logger    *slog.Logger // nil: slog.Default()
	Now       func() time.Time
}

// Service validates, stores and publishes run mutations. Build it with New.
type Service struct {
	Store store.Store
	Now   func() time.Time

	pub     Publisher
	log     *slog.Logger
	schemas schemaCache // compiled task schemas, so set_output does not recompile
}

// New builds the service on its store and publisher, both required.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("runs: Config.Store is required")
	}
	if cfg.Publisher == nil {
		return nil, errors.New("runs: Config.Publisher is required (NoPublisher publishes nothing)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{Store: cfg.Store, Now: cfg.Now, pub: cfg.Publisher, log: cfg.Logger}, nil
}

// ErrOutputInvalid wraps the reason an output does not match the task's
// JSON Schema.
var ErrOutputInvalid = errors.New("output does not match the task's json_schema")

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// PublishTimeout bounds one publish after a commit. The publish is detached
// from the request's context (a client that disconnects right after its
// write must not make the broker refuse the news and leave subscribers
// waiting for their position check), so it needs a bound of its own: 5 s is
// far above a healthy broker's round trip and short enough that a stalled
// broker holds a finished request only briefly.
const PublishTimeout = 5 * time.Second

// publish hands committed events to the publisher. The commit already
// happened, so the request being cancelled must not stop the news: the
// publish keeps ctx's values (logging) but not its cancellation
// (publishCtx). A failure is logged and loses nothing: subscribers
// backfill from the store.
func (s *Service) publish(ctx context.Context, runID string, res *store.MutationResult) {
	if !res.Replayed && len(res.Events) > 0 {
		pctx := newPublishCtx(ctx, PublishTimeout)
		defer pctx.stop()
		if err := s.pub.Publish(pctx, runID, res.Events); err != nil {
			s.log.WarnContext(ctx, "publish failed; subscribers will backfill", "run_id", runID, "err", err)
		}
	}
}

// CreateRun validates and creates a run, then publishes its first state event.
func (s *Service) CreateRun(ctx context.Context, project int64, task string, nr store.NewRun) (*store.Run, error) {
	if err := validateFields(nonEmpty(nr.Status), optPtr(nr.Stage), optPtr(nr.Branch), nonEmpty(nr.Environment), nil); err != nil {
		return nil, err
	}
	res, err := s.Store.CreateRun(ctx, project, task, nr)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, res.Run.ID, res)
	return res.Run, nil
}

// UpdateRun validates and applies a PATCH.
func (s *Service) UpdateRun(ctx context.Context, ref store.RunRef, p store.RunPatch, idem *store.Idempotency) (*store.MutationResult, error) {
	if err := validateFields(p.Status, p.Stage, p.Branch, p.Environment, idem); err != nil {
		return nil, err
	}
	if err := validUTF8("output", p.Output); err != nil {
		return nil, err
	}
	if err := validUTF8("state", p.State); err != nil {
		return nil, err
	}
	res, err := s.Store.UpdateRun(ctx, ref, p, idem)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ref.RunID, res)
	return res, nil
}

// SetOutput replaces the run's output after checking it against the task's
// JSON Schema, if the task has one.
func (s *Service) SetOutput(ctx context.Context, ref store.RunRef, output map[string]json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error) {
	if err := validateIdem(idem); err != nil {
		return nil, err
	}
	if output == nil {
		output = map[string]json.RawMessage{}
	}
	if err := validUTF8("output", output); err != nil {
		return nil, err
	}
	task, err := s.Store.GetTask(ctx, ref.ProjectID, ref.TaskID)
	if err != nil {
		return nil, err
	}
	if task.JSONSchema != nil {
		if err := s.validateOutput(task.JSONSchema, output); err != nil {
			return nil, err
		}
	}
	res, err := s.Store.SetOutput(ctx, ref, output, idem)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ref.RunID, res)
	return res, nil
}

// AppendLog validates raw entries (1..MaxEntries JSON objects, each at most
// MaxEntryBytes) and appends them; agent_message_chunk entries are published
// but not stored.
func (s *Service) AppendLog(ctx context.Context, ref store.RunRef, raw []json.RawMessage, idem *store.Idempotency) (*store.MutationResult, error) {
	if err := validateIdem(idem); err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, &store.ValidationError{Attr: "entries", Code: "min_length", Detail: "At least one log entry is required."}
	}
	if len(raw) > MaxEntries {
		return nil, &store.ValidationError{Attr: "entries", Code: "max_length",
			Detail: fmt.Sprintf("Ensure this field has no more than %d elements.", MaxEntries)}
	}
	now := s.now()
	entries := make([]store.LogEntry, len(raw))
	for i, r := range raw {
		e, err := store.ParseLogEntry(r, now)
		if errors.Is(err, store.ErrEntryNotUTF8) {
			return nil, &store.ValidationError{Attr: "entries", Code: "invalid",
				Detail: fmt.Sprintf("Entry %d is not valid UTF-8.", i)}
		}
		if err != nil {
			return nil, &store.ValidationError{Attr: "entries", Code: "invalid",
				Detail: fmt.Sprintf("Entry %d is not a JSON object.", i)}
		}
		if len(e.Data) > MaxEntryBytes {
			return nil, &store.ValidationError{Attr: "entries", Code: "max_length",
				Detail: fmt.Sprintf("Entry %d is larger than %d bytes.", i, MaxEntryBytes)}
		}
		entries[i] = e
	}
	res, err := s.Store.AppendLog(ctx, ref, entries, idem)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ref.RunID, res)
	return res, nil
}

// nonEmpty is nil for "" (a create's "use the default") and &v otherwise.
func nonEmpty(v string) *string {
	if v == "" {
		return nil
	}
	return &v
}

// optPtr turns an optional nullable string into the **string shape PATCH uses.
func optPtr(p *string) **string {
	if p == nil {
		return nil
	}
	return &p
}

// validUTF8 refuses raw JSON values with bytes that are not UTF-8 (keys
// were decoded into Go strings, which hold U+FFFD instead).
func validUTF8(attr string, m map[string]json.RawMessage) error {
	for _, v := range m {
		if !utf8.Valid(v) {
			return &store.ValidationError{Attr: attr, Code: "invalid", Detail: "This field must be valid UTF-8."}
		}
	}
	return nil
}

func validateIdem(idem *store.Idempotency) error {
	if idem != nil && (idem.Key == "" || len(idem.Key) > MaxIdemKeyLen || !utf8.ValidString(idem.Key)) {
		return &store.ValidationError{Attr: "Idempotency-Key", Code: "invalid",
			Detail: fmt.Sprintf("Idempotency-Key must be 1 to %d characters of valid UTF-8.", MaxIdemKeyLen)}
	}
	return nil
}

// validateFields checks the run fields shared by create and PATCH.
func validateFields(status *string, stage, branch **string, env *string, idem *store.Idempotency) error {
	if status != nil && !store.ValidStatus(*status) {
		return &store.ValidationError{Attr: "status", Code: "invalid_choice", Detail: fmt.Sprintf("%q is not a valid choice.", *status)}
	}
	if env != nil && *env != store.EnvCloud && *env != store.EnvLocal {
		return &store.ValidationError{Attr: "environment", Code: "invalid_choice", Detail: fmt.Sprintf("%q is not a valid choice.", *env)}
	}
	if err := maxLen("stage", stage, MaxStageLen); err != nil {
		return err
	}
	if err := maxLen("branch", branch, MaxBranchLen); err != nil {
		return err
	}
	return validateIdem(idem)
}

func maxLen(attr string, v **string, n int) error {
	if v != nil && *v != nil && utf8.RuneCountInString(**v) > n {
		return &store.ValidationError{Attr: attr, Code: "max_length",
			Detail: fmt.Sprintf("Ensure this field has no more than %d characters.", n)}
	}
	return nil
}
