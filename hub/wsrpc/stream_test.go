package wsrpc

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"
)

// FuzzDecodeMessage feeds arbitrary messages to DecodeMessage: nothing
// panics, a message is either decoded or answered with a JSON-RPC error
// reply that is UTF-8 and carries a real code, and a request that is not
// UTF-8 is never decoded.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"m","params":{"k":"v"}}`,
		`{"jsonrpc":"2.0","method":"note"}`,
		`{"jsonrpc":"2.0","id":2,"result":{"text":"ok"}}`,
		`{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"x"}}`,
		` [{"jsonrpc":"2.0","id":1,"method":"m"}]`,
		`[]`, `{not json`, `null`, `""`, `{}`, `7`, ``,
		`{"jsonrpc":"2.0","id":"` + "\xff" + `","method":"m"}`,
		`{"jsonrpc":"2.0","id":4,"result":"` + "\xc3" + `"}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"m"}`), false)
	f.Add([]byte{0xff, 0x00}, false)
	f.Fuzz(func(t *testing.T, b []byte, text bool) {
		typ := websocket.MessageBinary
		if text {
			typ = websocket.MessageText
		}
		var req jsonrpc2.Request
		if reply := DecodeMessage(typ, b, &req); reply != nil {
			var r struct {
				Error *jsonrpc2.Error `json:"error"`
			}
			if json.Unmarshal(reply, &r) != nil || r.Error == nil || r.Error.Code == 0 || !utf8.Valid(reply) {
				t.Fatalf("bad error reply %s", reply)
			}
			return
		}
		if !utf8.Valid(b) && req.Method != "" {
			t.Fatalf("a request that is not UTF-8 was accepted: %q", b)
		}
	})
}

// TestDecodeMessageRefusesInvalidUTF8: a request that is not UTF-8 gets
// -32602 under its own id (null when it has none) and is not decoded; a
// response (an agent's answer) goes through for the proxy to repair.
func TestDecodeMessageRefusesInvalidUTF8(t *testing.T) {
	for _, tc := range []struct {
		msg, id string
		refused bool
	}{
		{`{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"run_id":"` + "\xff" + `"}}`, "7", true},
		{`{"jsonrpc":"2.0","id":"a","method":"append_log","params":{"entries":[{"t` + "\xc3" + `":1}]}}`, `"a"`, true},
		{`{"jsonrpc":"2.0","method":"note","params":{"x":"` + "\xfe" + `"}}`, "null", true},
		{`{"jsonrpc":"2.0","id":3,"result":{"text":"` + "\xff" + `"}}`, "", false},
	} {
		var req map[string]any // what jsonrpc2 decodes into takes requests and responses
		reply := DecodeMessage(websocket.MessageText, []byte(tc.msg), &req)
		if !tc.refused {
			if reply != nil {
				t.Errorf("%q: refused with %s, want it decoded", tc.msg, reply)
			}
			continue
		}
		var r struct {
			ID    json.RawMessage `json:"id"`
			Error *jsonrpc2.Error `json:"error"`
		}
		if json.Unmarshal(reply, &r) != nil || r.Error == nil || r.Error.Code != jsonrpc2.CodeInvalidParams || string(r.ID) != tc.id || req != nil {
			t.Errorf("%q: reply %s (decoded %v), want -32602 with id %s", tc.msg, reply, req, tc.id)
		}
	}
}
