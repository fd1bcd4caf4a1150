// Package wsrpc carries JSON-RPC 2.0 over a WebSocket: one message per
// text message, as the hub's GET /ws and the sandbox proxy's agent
// connections (both ends) speak it. It is a leaf: it knows nothing of
// runhub, so that the hub and the proxy share it without depending on
// each other.
package wsrpc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/sourcegraph/jsonrpc2"
)

// stream adapts a coder/websocket connection to jsonrpc2.ObjectStream:
// one JSON-RPC message per text message. Malformed JSON gets a -32700 reply
// and the connection goes on (jsonrpc2 itself would drop it).
type stream struct {
	ws      *websocket.Conn
	gw      *GatherWriter
	ctx     context.Context
	timeout time.Duration
}

// NewObjectStream adapts a WebSocket to jsonrpc2.ObjectStream (one
// JSON-RPC message per text message; a malformed message gets -32700 and
// the connection goes on; batches get -32600); each write must finish
// within timeout. gw is the connection's GatherWriter when it was accepted
// with Accept (each message then leaves in one write), nil otherwise.
func NewObjectStream(ctx context.Context, ws *websocket.Conn, gw *GatherWriter, timeout time.Duration) jsonrpc2.ObjectStream {
	return stream{ws: ws, gw: gw, ctx: ctx, timeout: timeout}
}

func (s stream) WriteObject(obj any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	if s.gw == nil {
		return s.ws.Write(ctx, websocket.MessageText, b)
	}
	s.gw.Gather()
	err = s.ws.Write(ctx, websocket.MessageText, b)
	if rerr := s.gw.Release(); err == nil {
		err = rerr
	}
	return err
}

var (
	parseErrorReply     = []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}`)
	invalidRequestReply = []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request: send one JSON-RPC object per message (batches are not supported)"}}`)
)

func (s stream) ReadObject(v any) error {
	for {
		typ, b, err := s.ws.Read(s.ctx)
		if err != nil {
			if st := websocket.CloseStatus(err); st == websocket.StatusNormalClosure || st == websocket.StatusGoingAway {
				return io.EOF
			}
			return err
		}
		reply := DecodeMessage(typ, b, v)
		if reply == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
		err = s.ws.Write(ctx, websocket.MessageText, reply)
		cancel()
		if err != nil {
			return err
		}
	}
}

// DecodeMessage decodes one received message into v, or returns the error
// reply it gets instead: -32700 for what is not JSON text, -32600 for a
// batch or a message that is not a JSON-RPC object, -32602 for a request
// that is not UTF-8. It is what the stream's ReadObject applies to every
// message.
func DecodeMessage(typ websocket.MessageType, b []byte, v any) (reply []byte) {
	switch {
	case typ != websocket.MessageText || !json.Valid(b):
		return parseErrorReply
	case len(b) > 0 && strings.TrimSpace(string(b[:1])) == "[":
		return invalidRequestReply
	case !utf8.Valid(b):
		// Stored and relayed text is always UTF-8 (a browser closes the
		// socket with 1007 on anything else), so a request that is not is
		// refused, not repaired, and the connection goes on. A response
		// (an agent's answer to a command) goes through: the proxy
		// replaces what is not UTF-8 before relaying it.
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method *string         `json:"method"`
		}
		if json.Unmarshal(b, &req) != nil || req.Method != nil {
			if len(req.ID) == 0 || !utf8.Valid(req.ID) {
				req.ID = json.RawMessage("null")
			}
			return fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32602,"message":"Invalid params: text must be valid UTF-8"}}`, req.ID)
		}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return invalidRequestReply
	}
	return nil
}

func (s stream) Close() error { return s.ws.Close(websocket.StatusNormalClosure, "") }

// DiscardLogger drops what jsonrpc2 logs (jsonrpc2.SetLogger): a
// connection's failures reach its owner as errors, which it logs itself.
type DiscardLogger struct{}

func (DiscardLogger) Printf(string, ...any) {}
