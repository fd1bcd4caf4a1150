package runs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"unicode/utf8"

	"runhub/store"
)

// The JSON decoding every mutation body goes through, whoever sends it (a
// REST body, an agent's params): one set of rules and one set of messages.
// Every refusal is a *store.ValidationError (answered 400 by REST, -32602
// by the proxy), except ErrOutputNotDict, which the REST contract answers
// in its own shape.

// Fields is a decoded JSON object body; unknown keys are ignored.
type Fields map[string]json.RawMessage

// invalid builds the *store.ValidationError of a refused body.
func invalid(attr, code, detail string) error {
	return &store.ValidationError{Attr: attr, Code: code, Detail: detail}
}

// jsonKind names the JSON type of raw the way DRF messages do.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "dict"
	case '[':
		return "list"
	case '"':
		return "str"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

func isNull(raw json.RawMessage) bool { return jsonKind(raw) == "null" }

// unmarshalObject decodes a body that must be one JSON object into v (an
// empty body is {}), mapping syntax errors to parse_error and a non-object
// body to a validation error. Every body goes through here, so this is
// where bytes that are not UTF-8 are refused (encoding/json would keep
// them in a json.RawMessage and silently replace them in a string); \u
// escapes of lone surrogates are valid JSON text and pass (see the
// package comment).
func unmarshalObject(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		body = []byte("{}")
	}
	if !utf8.Valid(body) {
		return notUTF8(body)
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) {
		return invalid("", "parse_error", "JSON parse error - the request body is not valid JSON.")
	}
	if k := jsonKind(body); k != "dict" {
		return invalid("", "invalid_input", fmt.Sprintf("Invalid data. Expected a dictionary, but got %s.", k))
	}
	return invalid(te.Field, "invalid_input", fmt.Sprintf("Expected %s.", te.Type))
}

// notUTF8 is the refusal of a body with bytes that are not UTF-8, on the
// first top-level field (in key order) whose value holds them, or on no
// field when they are elsewhere (a key, or a body that is not an object).
func notUTF8(body []byte) error {
	var f Fields
	if json.Unmarshal(body, &f) == nil {
		keys := make([]string, 0, len(f))
		for k := range f {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !utf8.Valid(f[k]) {
				return invalid(k, "invalid", "This field must be valid UTF-8.")
			}
		}
	}
	return invalid("", "invalid", "The request body must be valid UTF-8.")
}

// ParseObject decodes a body that must be one JSON object (an empty body
// is {}).
func ParseObject(body []byte) (Fields, error) {
	var f Fields
	if err := unmarshalObject(body, &f); err != nil {
		return nil, err
	}
	if f == nil { // the body was "null"
		return nil, invalid("", "invalid_input", "Invalid data. Expected a dictionary, but got null.")
	}
	return f, nil
}

func errNull(name string) error {
	return invalid(name, "null", "This field may not be null.")
}

// optional returns the value of an optional field, nil when it is absent
// or JSON null (an error unless nullable).
func (f Fields) optional(name string, nullable bool) (raw json.RawMessage, present bool, err error) {
	raw, present = f[name]
	if !present || !isNull(raw) {
		return raw, present, nil
	}
	if !nullable {
		return nil, true, errNull(name)
	}
	return nil, true, nil
}

// str decodes an optional string field. present reports whether the key was
// sent; v is nil for JSON null (allowed only when nullable).
func (f Fields) str(name string, nullable bool) (present bool, v *string, err error) {
	raw, present, err := f.optional(name, nullable)
	if raw == nil {
		return present, nil, err
	}
	var s string
	if jsonKind(raw) != "str" || json.Unmarshal(raw, &s) != nil {
		return true, nil, invalid(name, "invalid_input", "Not a valid string.")
	}
	return true, &s, nil
}

// boolean decodes an optional, non-nullable boolean field; nil when absent.
func (f Fields) boolean(name string) (*bool, error) {
	raw, _, err := f.optional(name, false)
	if raw == nil {
		return nil, err
	}
	var v bool
	if jsonKind(raw) != "bool" || json.Unmarshal(raw, &v) != nil {
		return nil, invalid(name, "invalid", "Must be a valid boolean.")
	}
	return &v, nil
}

// object decodes an optional JSON-object field; v is nil for JSON null
// (allowed only when nullable).
func (f Fields) object(name string, nullable bool) (present bool, v map[string]json.RawMessage, err error) {
	raw, present, err := f.optional(name, nullable)
	if raw == nil {
		return present, nil, err
	}
	if k := jsonKind(raw); k != "dict" {
		return true, nil, invalid(name, "not_a_dict", fmt.Sprintf("Expected a dictionary of items but got type %q.", k))
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return true, nil, invalid(name, "invalid_input", "Expected a dictionary of items.")
	}
	if v == nil {
		v = map[string]json.RawMessage{}
	}
	return true, v, nil
}

// flag decodes an optional boolean field (absent or null: false).
func (f Fields) flag(name string) (bool, error) {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return false, nil
	}
	var v bool
	if jsonKind(raw) != "bool" || json.Unmarshal(raw, &v) != nil {
		return false, invalid(name, "invalid", "Must be a valid boolean.")
	}
	return v, nil
}

// strList decodes an optional list of strings.
func (f Fields) strList(name string) ([]string, error) {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var out []string
	if jsonKind(raw) != "list" || json.Unmarshal(raw, &out) != nil {
		return nil, invalid(name, "not_a_list", "Expected a list of strings.")
	}
	return out, nil
}

// list decodes a required list of raw JSON values.
func (f Fields) list(name string) ([]json.RawMessage, error) {
	raw, ok := f[name]
	if !ok {
		return nil, invalid(name, "required", "This field is required.")
	}
	if isNull(raw) {
		return nil, errNull(name)
	}
	var out []json.RawMessage
	if jsonKind(raw) != "list" || json.Unmarshal(raw, &out) != nil {
		return nil, invalid(name, "not_a_list", fmt.Sprintf("Expected a list of items but got type %q.", jsonKind(raw)))
	}
	return out, nil
}
