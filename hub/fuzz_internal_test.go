package hub

import (
	"context"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/store"
)

// FuzzWSMessage feeds arbitrary client messages of GET /ws through the
// decoding and request handling a connection applies: nothing panics, a
// message is either decoded or answered with a JSON-RPC error reply, every
// error carries a real JSON-RPC code, and the connection's subscriptions
// are consistent afterwards.
func FuzzWSMessage(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"run_id":"0b0c3f5e-4b8f-4a53-9d6c-2c1f7a1e9b10"}}`,
		`{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"run_id":"0b0c3f5e-4b8f-4a53-9d6c-2c1f7a1e9b10","after":"latest"}}`,
		`{"jsonrpc":"2.0","id":3,"method":"subscribe","params":{"run_id":"0b0c3f5e-4b8f-4a53-9d6c-2c1f7a1e9b10","after":-1}}`,
		`{"jsonrpc":"2.0","id":4,"method":"unsubscribe","params":{"run_id":"0b0c3f5e-4b8f-4a53-9d6c-2c1f7a1e9b10"}}`,
		`{"jsonrpc":"2.0","method":"subscribe","params":[]}`,
		`{"jsonrpc":"2.0","id":"x","method":"nope"}`,
		`[{"jsonrpc":"2.0","id":1,"method":"subscribe"}]`,
		`{not json`, `null`, `""`, `{}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte{0xff, 0x00}, false)
	f.Add([]byte(`{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"run_id":"`+"\xff"+`"}}`), true)
	f.Fuzz(func(t *testing.T, b []byte, text bool) {
		h, err := New(Config{Store: emptySource{}, Broker: NewMemoryBroker()})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		nop := func(context.Context, [][]byte) error { return nil }
		m := &muxSession{h: h, c: newConn(kindWS, 1<<20, 0, nop), subs: map[string]*sub{},
			authorize: func(_ context.Context, id, _ string) (*store.Run, bool, error) {
				return &store.Run{ID: id, LastSeq: 3, Status: store.StatusInProgress}, false, nil
			}}
		m.c.mux = true
		typ := websocket.MessageBinary
		if text {
			typ = websocket.MessageText
		}
		var req jsonrpc2.Request
		if reply := decodeMessage(typ, b, &req); reply != nil {
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
		if _, rerr := m.handle(context.Background(), &req); rerr != nil && rerr.Code == 0 {
			t.Fatalf("error without a code: %+v", rerr)
		}
		m.closeAll()
		if runs, subs := h.StateForTest(); runs != 0 || subs != 0 {
			t.Fatalf("after closing: %d runs, %d subscriptions", runs, subs)
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
		reply := decodeMessage(websocket.MessageText, []byte(tc.msg), &req)
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
