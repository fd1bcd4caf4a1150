package rest

import (
	"context"
	"encoding/json"
	"net/http"

	"runhub/proxy"
	"runhub/store"
)

// Commander relays a command to a run's agent (proxy.Proxy).
type Commander interface {
	Command(ctx context.Context, run *store.Run, method string, params json.RawMessage, id any) (*proxy.Response, error)
}

// DecodeRunPatch decodes a PATCH body with the REST rules; the sandbox
// proxy applies it to an agent's update.
func DecodeRunPatch(body []byte) (store.RunPatch, error) { return decodeRunPatch(body) }

// commandMethods are the methods a command may relay.
var commandMethods = map[string]bool{"user_message": true, "cancel": true, "close": true}

// decodeCommand validates a command body: {"jsonrpc": "2.0", "method",
// "params"?, "id"?}; user_message needs a non-empty params.content.
func decodeCommand(body []byte) (method string, params json.RawMessage, id any, err error) {
	f, err := parseBody(body)
	if err != nil {
		return "", nil, nil, err
	}
	if raw, ok := f["jsonrpc"]; ok {
		var v string
		if json.Unmarshal(raw, &v) != nil || v != "2.0" {
			return "", nil, nil, validation("jsonrpc", "invalid", `jsonrpc must be "2.0".`)
		}
	}
	if json.Unmarshal(f["method"], &method) != nil || !commandMethods[method] {
		return "", nil, nil, validation("method", "invalid_choice", "method must be one of user_message, cancel, close.")
	}
	params = f["params"]
	if len(params) > 0 && !isNull(params) && jsonKind(params) != "dict" {
		return "", nil, nil, validation("params", "invalid", "params must be an object.")
	}
	if isNull(params) {
		params = nil
	}
	if method == "user_message" {
		var p struct {
			Content *string `json:"content"`
		}
		if len(params) == 0 || json.Unmarshal(params, &p) != nil || p.Content == nil || *p.Content == "" {
			return "", nil, nil, validation("params", "required", "user_message needs a non-empty string params.content.")
		}
	}
	if raw, ok := f["id"]; ok {
		switch jsonKind(raw) {
		case "str", "number", "null":
			json.Unmarshal(raw, &id)
		default:
			return "", nil, nil, validation("id", "invalid", "id must be a string, a number or null.")
		}
	}
	return method, params, id, nil
}

// command serves POST .../command: the agent's JSON-RPC response with 200.
func (s *Server) command(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	method, params, id, err := decodeCommand(body)
	if err != nil {
		return err
	}
	resp, err := s.commands.Command(r.Context(), run, method, params, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
