package hub

import (
	"context"
	"testing"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"

	"runhub/hub/wsrpc"
	"runhub/store"
)

// FuzzWSMessage feeds arbitrary client messages of GET /ws through the
// decoding and request handling a connection applies: nothing panics,
// every error of a decoded request carries a real JSON-RPC code, and the
// connection's subscriptions are consistent afterwards. What the decoding
// itself guarantees is wsrpc's FuzzDecodeMessage.
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
		m := &muxSession{h: h, c: newConn(kindWS, 1<<20, 0, nop),
			authorize: func(_ context.Context, id, _ string) (*store.Run, bool, error) {
				return &store.Run{ID: id, LastSeq: 3, Status: store.StatusInProgress}, false, nil
			}}
		m.c.mux = true
		typ := websocket.MessageBinary
		if text {
			typ = websocket.MessageText
		}
		var req jsonrpc2.Request
		if reply := wsrpc.DecodeMessage(typ, b, &req); reply != nil {
			return
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
