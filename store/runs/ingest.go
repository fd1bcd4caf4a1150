package runs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"runhub/store"
)

// Limits of the sequenced event ingest (POST .../event_stream/). They are
// PostHog's, so that a sender written for PostHog never meets a smaller
// limit here: its TaskRunEventStreamSender closes an upload at 900 events
// or 4 MB, which leaves headroom below each.
const (
	// MaxIngestLineBytes bounds one NDJSON line: one agent event (a large
	// tool result) and its seq wrapper. Below MaxEntryBytes, so an event
	// that fits a line fits the log.
	MaxIngestLineBytes = 1_000_000
	// MaxIngestRequestBytes bounds one upload's body: about a sender's
	// window of events, and far below the API's body limit.
	MaxIngestRequestBytes = 5_000_000
	// MaxIngestEvents bounds the event lines of one upload (blank lines
	// and the completion line do not count).
	MaxIngestEvents = 1_000
)

// StreamCompleteType is the "type" of the ingest's completion line.
const StreamCompleteType = "_posthog/stream_complete"

// IngestLineError is a line of the ingest that is not one of its two
// shapes; Detail is the sentence answered to the sender (PostHog's).
type IngestLineError struct{ Detail string }

func (e *IngestLineError) Error() string { return "ingest line: " + e.Detail }

// DecodedIngestLine is one decoded line: an event line, or the completion
// line (Complete, with FinalSeq).
type DecodedIngestLine struct {
	Event    store.IngestLine
	Complete bool
	FinalSeq int64
}

// DecodeIngestLine decodes one non-blank NDJSON line of the ingest: an
// event line {"seq": n ≥ 1, "event": {...}} or the completion line
// {"type": "_posthog/stream_complete", "final_seq": n ≥ 0}. The event is
// parsed as a log entry received at now. Numbers must be integers as
// written ("1", not "1.0" or "1e0"), as PostHog requires. Every refusal is
// an *IngestLineError.
func DecodeIngestLine(line []byte, now time.Time) (DecodedIngestLine, error) {
	var out DecodedIngestLine
	if !utf8.Valid(line) {
		return out, &IngestLineError{"Invalid UTF-8 in event stream"}
	}
	line = bytes.TrimSpace(line)
	if !json.Valid(line) {
		return out, &IngestLineError{"Invalid JSON line"}
	}
	if jsonKind(line) != "dict" {
		return out, &IngestLineError{"Each event line must be a JSON object"}
	}
	var f Fields
	if err := json.Unmarshal(line, &f); err != nil {
		return out, &IngestLineError{"Invalid JSON line"}
	}
	var typ string
	if t, ok := f["type"]; ok && json.Unmarshal(t, &typ) == nil && typ == StreamCompleteType {
		n, ok := jsonInt(f["final_seq"])
		if !ok || n < 0 {
			return out, &IngestLineError{"Completion final sequence must be a non-negative integer"}
		}
		out.Complete, out.FinalSeq = true, n
		return out, nil
	}
	seq, ok := jsonInt(f["seq"])
	if !ok || seq < 1 {
		return out, &IngestLineError{"Event sequence must be a positive integer"}
	}
	ev := f["event"]
	if jsonKind(ev) != "dict" {
		return out, &IngestLineError{"Event payload must be an object"}
	}
	entry, err := store.ParseLogEntry(ev, now)
	if err != nil {
		// The line was valid UTF-8 JSON and event an object: unreachable
		// but for a parser that disagrees, refused all the same.
		return out, &IngestLineError{"Event payload must be an object"}
	}
	out.Event = store.IngestLine{Seq: seq, Entry: entry}
	return out, nil
}

// jsonInt reads a JSON number written as an integer that fits an int64.
func jsonInt(raw json.RawMessage) (int64, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.ContainsAny(raw, ".eE") {
		return 0, false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return n, err == nil
}

// IngestState reads the run's ingest sequence (what an empty upload
// answers).
func (s *Service) IngestState(ctx context.Context, ref store.RunRef) (store.IngestState, error) {
	return s.Store.IngestState(ctx, ref)
}

// IngestEvents stores decoded event lines of the sequenced ingest (each
// accepted at most once, by its sender seq) and publishes what was
// accepted. A conflict (gap, completed stream) is in the result, with the
// lines before it stored and published.
func (s *Service) IngestEvents(ctx context.Context, ref store.RunRef, lines []store.IngestLine) (*store.IngestResult, error) {
	if len(lines) == 0 {
		return nil, errors.New("ingest events: no lines")
	}
	res, err := s.Store.IngestEvents(ctx, ref, lines)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ref.RunID, &res.MutationResult)
	return res, nil
}

// CompleteIngest records the sender's completion line; a final_seq other
// than the last accepted seq is a conflict in the result.
func (s *Service) CompleteIngest(ctx context.Context, ref store.RunRef, finalSeq int64) (*store.IngestResult, error) {
	return s.Store.CompleteIngest(ctx, ref, finalSeq)
}
