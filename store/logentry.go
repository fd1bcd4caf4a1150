package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"
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

// ErrEntryNotUTF8: a log entry with bytes that are not UTF-8. json.Compact
// keeps them, and a browser closes a WebSocket (1007) on a text frame that
// carries them, so such an entry is never stored.
var ErrEntryNotUTF8 = errors.New("log entry must be valid UTF-8")

// ParseLogEntry validates one raw entry and prepares it for storage.
//
// The event type is notification.params.update.sessionUpdate when
// notification.method is "session/update", else notification.method, else
// the entry's "type". An entry without a "timestamp" gets now, so that
// session_logs' `after` filter sees every entry.
//
// The entry's bytes must be UTF-8 (else ErrEntryNotUTF8), so stored data
// is. A \u escape of a lone surrogate ("\ud800") is valid JSON in UTF-8
// and is kept as written: every JSON decoder reads it (Go's as U+FFFD).
func ParseLogEntry(raw []byte, now time.Time) (LogEntry, error) {
	raw = bytes.Trim(raw, " \t\r\n") // JSON's whitespace, nothing more
	if !utf8.Valid(raw) {
		return LogEntry{}, ErrEntryNotUTF8
	}
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
	if mayHaveKeyVariant(data) {
		// encoding/json matches field names case-insensitively; the
		// contract's keys are exact, so re-read them from a map.
		exactFields(data, &top.Type, &top.Timestamp, &top.Notification.Method, &top.Notification.Params.Update.SessionUpdate)
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
		t := now.UTC().Truncate(time.Microsecond) // exactly what is written
		e.Time = &t
		ts, _ := json.Marshal(FormatTime(t))
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
	// raw is a string of valid JSON: without a backslash, what lies
	// between its quotes is the value (the usual case, decoded without
	// encoding/json's allocations).
	if len(raw) >= 2 && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// entryKeys are the keys ParseLogEntry reads, exactly as the contract spells them.
var entryKeys = []string{"timestamp", "type", "notification", "method", "params", "update", "sessionUpdate"}

// mayHaveKeyVariant reports whether data may hold a key that differs from
// one of entryKeys only by case, or an escaped key. False positives only
// cost the slower exact path; it never misses a variant.
func mayHaveKeyVariant(data []byte) bool {
	for i := 0; ; {
		j := bytes.Index(data[i:], []byte(`":`))
		if j < 0 {
			return false
		}
		end := i + j
		i = end + 2
		key := data[bytes.LastIndexByte(data[:end], '"')+1 : end]
		if len(key) < len("type") {
			continue
		}
		switch key[0] | 0x20 { // first letters in any case; 0xC5 starts U+017F (long s), which folds to s
		case 't', 'n', 'm', 'p', 'u', 's', 0xC5 | 0x20:
		default:
			continue
		}
		if bytes.IndexByte(key, '\\') >= 0 {
			return true
		}
		ascii := true
		for _, c := range key {
			if c >= 0x80 {
				ascii = false
				break
			}
		}
		for _, k := range entryKeys { // only non-ASCII folds (K, ſ) change the length
			if len(key) < len(k) || (ascii && len(key) != len(k)) || string(key) == k {
				continue
			}
			if bytes.EqualFold(key, []byte(k)) {
				return true
			}
		}
	}
}

// exactFields reads the entry's fields by exact key.
func exactFields(data []byte, typ, ts, method, sessionUpdate *json.RawMessage) {
	top := objectOf(data)
	*typ, *ts = top["type"], nil
	if v, ok := top["timestamp"]; ok {
		*ts = v
	}
	n := objectOf(top["notification"])
	*method = n["method"]
	*sessionUpdate = objectOf(objectOf(n["params"])["update"])["sessionUpdate"]
}

// objectOf decodes raw as an object, or returns nil.
func objectOf(raw json.RawMessage) map[string]json.RawMessage {
	if len(raw) == 0 || raw[0] != '{' {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m
}
