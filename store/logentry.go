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
	var top struct {
		Type         json.RawMessage `json:"type"`
		Timestamp    json.RawMessage `json:"timestamp"`
		Notification json.RawMessage `json:"notification"`
	}
	if err := json.Unmarshal(raw, &top); err != nil {
		return LogEntry{}, ErrEntryNotObject
	}
	var buf bytes.Buffer
	buf.Grow(len(raw) + 48)
	if err := json.Compact(&buf, raw); err != nil {
		return LogEntry{}, ErrEntryNotObject
	}
	data := buf.Bytes()
	if top.Timestamp == nil {
		ts, _ := json.Marshal(FormatTime(now))
		out := make([]byte, 0, len(data)+len(ts)+14)
		out = append(out, `{"timestamp":`...)
		out = append(out, ts...)
		if len(data) > 2 {
			out = append(out, ',')
		}
		data = append(out, data[1:]...)
	}
	e := LogEntry{Data: data, Type: stringOf(top.Type)}
	if top.Timestamp == nil {
		t := now.UTC()
		e.Time = &t
	} else if s := stringOf(top.Timestamp); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			t = t.UTC()
			e.Time = &t
		}
	}
	if len(top.Notification) > 0 && top.Notification[0] == '{' {
		var n struct {
			Method json.RawMessage `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(top.Notification, &n) == nil {
			method := stringOf(n.Method)
			if method == "session/update" && len(n.Params) > 0 && n.Params[0] == '{' {
				var p struct {
					Update json.RawMessage `json:"update"`
				}
				if json.Unmarshal(n.Params, &p) == nil && len(p.Update) > 0 && p.Update[0] == '{' {
					var u struct {
						SessionUpdate json.RawMessage `json:"sessionUpdate"`
					}
					if json.Unmarshal(p.Update, &u) == nil {
						if su := stringOf(u.SessionUpdate); su != "" {
							method = su
						}
					}
				}
			}
			if method != "" {
				e.Type = method
			}
		}
	}
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
