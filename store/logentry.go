package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
)

// TimeFormat is the wire format of every timestamp runhub writes: RFC 3339,
// UTC with a Z suffix and microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// FormatTime renders t in TimeFormat.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// LogEntry is a log entry ready to store: compact JSON (one line in JSONL),
// with a timestamp, and its event type extracted once.
type LogEntry struct {
	Data []byte     // compact JSON object
	Type string     // the event type: see ParseLogEntry
	Time *time.Time // the parsed "timestamp", nil when it does not parse
}

// Ephemeral reports whether the entry is delivered live but never stored.
func (e *LogEntry) Ephemeral() bool { return e.Type == KindChunk }

// ErrEntryNotObject: a log entry that is not a JSON object.
var ErrEntryNotObject = errors.New("log entry must be a JSON object")

// ParseLogEntry validates one raw entry and prepares it for storage.
//
// The event type is notification.params.update.sessionUpdate when
// notification.method is "session/update", else notification.method, else
// the entry's "type". An entry without a "timestamp" gets now, so that
// session_logs' `after` filter sees every entry.
func ParseLogEntry(raw []byte, now time.Time) (LogEntry, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return LogEntry{}, ErrEntryNotObject
	}
	var buf bytes.Buffer
	buf.Grow(len(raw) + 48)
	if err := json.Compact(&buf, raw); err != nil {
		return LogEntry{}, ErrEntryNotObject
	}
	data := buf.Bytes()
	// One decode reaches every field the event type needs. A field of the
	// wrong JSON type is skipped by encoding/json with an UnmarshalTypeError,
	// which only means the entry does not follow the agent's shape.
	var top struct {
		Type         json.RawMessage `json:"type"`
		Timestamp    json.RawMessage `json:"timestamp"`
		Notification struct {
			Method json.RawMessage `json:"method"`
			Params struct {
				Update struct {
					SessionUpdate json.RawMessage `json:"sessionUpdate"`
				} `json:"update"`
			} `json:"params"`
		} `json:"notification"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return LogEntry{}, ErrEntryNotObject
		}
	}
	e := LogEntry{Type: stringOf(top.Type)}
	if method := stringOf(top.Notification.Method); method != "" {
		e.Type = method
		if method == "session/update" {
			if su := stringOf(top.Notification.Params.Update.SessionUpdate); su != "" {
				e.Type = su
			}
		}
	}
	if top.Timestamp == nil {
		t := now.UTC()
		e.Time = &t
		ts, _ := json.Marshal(FormatTime(now))
		out := make([]byte, 0, len(data)+len(ts)+14)
		out = append(out, `{"timestamp":`...)
		out = append(out, ts...)
		if len(data) > 2 {
			out = append(out, ',')
		}
		data = append(out, data[1:]...)
	} else if s := stringOf(top.Timestamp); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			t = t.UTC()
			e.Time = &t
		}
	}
	e.Data = data
	return e, nil
}

// stringOf returns the string value of raw, or "" if raw is not a JSON string.
func stringOf(raw json.RawMessage) string {
	if len(raw) == 0 || raw[0] != '"' {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}
