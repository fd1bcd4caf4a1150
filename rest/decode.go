package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strings"
	"unicode/utf8"
)

// readBody reads the request body; the size limit is enforced by the
// MaxBytesReader the server installs, which makes this fail with
// *http.MaxBytesError (413). A declared non-JSON content type is 415.
func readBody(r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !(mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
			return nil, &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request", Code: "unsupported_media_type",
				Detail: fmt.Sprintf("Unsupported media type %q in request.", ct)}
		}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return body, nil
}

// fields is a decoded JSON object body; unknown keys are ignored.
type fields map[string]json.RawMessage

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

// unmarshalBody decodes a request body that must be one JSON object into v,
// mapping syntax errors to parse_error and a non-object body to a
// validation error. Every JSON body goes through here, so this is where
// bytes that are not UTF-8 are refused (encoding/json would keep them in a
// json.RawMessage and silently replace them in a string); \u escapes of
// lone surrogates are valid JSON text and pass (see package runs).
func unmarshalBody(body []byte, v any) error {
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
		return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "parse_error",
			Detail: "JSON parse error - the request body is not valid JSON."}
	}
	if k := jsonKind(body); k != "dict" {
		return validation("", "invalid_input", fmt.Sprintf("Invalid data. Expected a dictionary, but got %s.", k))
	}
	return validation(te.Field, "invalid_input", fmt.Sprintf("Expected %s.", te.Type))
}

// notUTF8 is the 400 for a body with bytes that are not UTF-8, on the
// first top-level field (in key order) whose value holds them, or on no
// field when they are elsewhere (a key, or a body that is not an object).
func notUTF8(body []byte) error {
	var f fields
	if json.Unmarshal(body, &f) == nil {
		keys := make([]string, 0, len(f))
		for k := range f {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !utf8.Valid(f[k]) {
				return validation(k, "invalid", "This field must be valid UTF-8.")
			}
		}
	}
	return validation("", "invalid", "The request body must be valid UTF-8.")
}

// parseBody decodes a request body that must be one JSON object.
func parseBody(body []byte) (fields, error) {
	var f fields
	if err := unmarshalBody(body, &f); err != nil {
		return nil, err
	}
	if f == nil { // the body was "null"
		return nil, validation("", "invalid_input", "Invalid data. Expected a dictionary, but got null.")
	}
	return f, nil
}

// decodeRequest reads and parses the body of r.
func decodeRequest(r *http.Request) (fields, []byte, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, nil, err
	}
	f, err := parseBody(body)
	return f, body, err
}

func errNull(name string) error {
	return validation(name, "null", "This field may not be null.")
}

// str decodes an optional string field. present reports whether the key was
// sent; v is nil for JSON null (allowed only when nullable).
func (f fields) str(name string, nullable bool) (present bool, v *string, err error) {
	raw, ok := f[name]
	if !ok {
		return false, nil, nil
	}
	if isNull(raw) {
		if !nullable {
			return true, nil, errNull(name)
		}
		return true, nil, nil
	}
	var s string
	if jsonKind(raw) != "str" || json.Unmarshal(raw, &s) != nil {
		return true, nil, validation(name, "invalid_input", "Not a valid string.")
	}
	return true, &s, nil
}

// object decodes an optional JSON-object field; v is nil for JSON null
// (allowed only when nullable).
func (f fields) object(name string, nullable bool) (present bool, v map[string]json.RawMessage, err error) {
	raw, ok := f[name]
	if !ok {
		return false, nil, nil
	}
	if isNull(raw) {
		if !nullable {
			return true, nil, errNull(name)
		}
		return true, nil, nil
	}
	if k := jsonKind(raw); k != "dict" {
		return true, nil, validation(name, "not_a_dict", fmt.Sprintf("Expected a dictionary of items but got type %q.", k))
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return true, nil, validation(name, "invalid_input", "Expected a dictionary of items.")
	}
	if v == nil {
		v = map[string]json.RawMessage{}
	}
	return true, v, nil
}

// strList decodes an optional list of strings.
func (f fields) strList(name string) ([]string, error) {
	raw, ok := f[name]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var out []string
	if jsonKind(raw) != "list" || json.Unmarshal(raw, &out) != nil {
		return nil, validation(name, "not_a_list", "Expected a list of strings.")
	}
	return out, nil
}

// list decodes a required list of raw JSON values.
func (f fields) list(name string) ([]json.RawMessage, error) {
	raw, ok := f[name]
	if !ok {
		return nil, validation(name, "required", "This field is required.")
	}
	if isNull(raw) {
		return nil, errNull(name)
	}
	var out []json.RawMessage
	if jsonKind(raw) != "list" || json.Unmarshal(raw, &out) != nil {
		return nil, validation(name, "not_a_list", fmt.Sprintf("Expected a list of items but got type %q.", jsonKind(raw)))
	}
	return out, nil
}
