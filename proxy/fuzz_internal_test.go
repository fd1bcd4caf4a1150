package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"

	"github.com/sourcegraph/jsonrpc2"

	"runhub/store"
)

// acceptRuns accepts every change but an empty append (the run service's
// own validation is tested with the store).
type acceptRuns struct{}

func (acceptRuns) AppendLog(_ context.Context, _ store.RunRef, raw []json.RawMessage, _ *store.Idempotency) (*store.MutationResult, error) {
	if len(raw) == 0 {
		return nil, &store.ValidationError{Attr: "entries", Code: "min_length", Detail: "At least one log entry is required."}
	}
	return &store.MutationResult{Run: &store.Run{}}, nil
}

func (acceptRuns) UpdateRun(context.Context, store.RunRef, store.RunPatch, *store.Idempotency) (*store.MutationResult, error) {
	return &store.MutationResult{Run: &store.Run{}}, nil
}

func (acceptRuns) SetOutput(context.Context, store.RunRef, map[string]json.RawMessage, *store.Idempotency) (*store.MutationResult, error) {
	return &store.MutationResult{Run: &store.Run{}}, nil
}

// FuzzAgentRequest: whatever an agent sends, its request handler answers
// with a result or a JSON-RPC error that has a real code, never a panic.
func FuzzAgentRequest(f *testing.F) {
	for _, s := range [][2]string{
		{"append_log", `{"entries":[{"type":"x"}],"seq":1}`},
		{"append_log", `{"entries":[{"type":"x"}],"seq":1,"session":"OX2D2FSAC2MSRDVJ57LVBT3UQY"}`},
		{"append_log", `{"entries":[{"type":"x"}],"session":"s"}`},
		{"append_log", `{"entries":[{"type":"x"}],"seq":1,"session":"a:b"}`},
		{"append_log", `{"entries":[{"type":"x"}],"seq":1,"session":7}`},
		{"append_log", `{"entries":[],"seq":-1}`},
		{"append_log", `{"seq":"x"}`},
		{"update", `{"status":"completed"}`},
		{"update", `[]`},
		{"set_output", `{"output":{"a":1}}`},
		{"set_output", `{"output":null}`},
		{"nope", `{}`},
		{"append_log", ``},
	} {
		f.Add(s[0], []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, method string, params []byte) {
		// Built in place: only the dispatch is fuzzed, with no tokens or store.
		p := &Proxy{log: slog.Default(), agents: map[string]*session{}, cfg: Config{Runs: acceptRuns{}}}
		s := &session{run: &store.Run{ID: "r", TaskID: "t", ProjectID: 1}}
		req := &jsonrpc2.Request{Method: method}
		if params != nil {
			raw := json.RawMessage(params)
			req.Params = &raw
		}
		res, err := p.handler(s)(context.Background(), nil, req)
		if err != nil {
			var rerr *jsonrpc2.Error
			if !errors.As(err, &rerr) || rerr.Code == 0 {
				t.Fatalf("%s %s: error %v without a JSON-RPC code", method, params, err)
			}
			return
		}
		if res == nil {
			t.Fatalf("%s %s: neither result nor error", method, params)
		}
	})
}
