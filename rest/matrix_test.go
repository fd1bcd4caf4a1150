package rest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gorilla/mux"

	"runhub/hub"
	"runhub/proxy"
	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
	"runhub/web"
)

// The route × credential matrix: every route the router serves, tried with
// every way a caller can present itself, against the answer the contract
// (shared/API.md, "Authentication and isolation") and the code give. The
// route list is walked from the real router, so a route added without a
// row fails TestRouteCredentialMatrix, and so does a row whose route is
// gone; the /ws JSON-RPC methods are read from the hub's dispatch code for
// the same reason.

// Credentials, in the order every row tries them. write_key comes last: it
// is what succeeds on write routes, and a successful DELETE leaves nothing
// for the cells after it.
const (
	credNone             = "none"                // no Authorization header, no ?token=
	credBasic            = "basic_scheme"        // Authorization: Basic with a valid key inside
	credBearerEmpty      = "bearer_empty"        // Authorization: Bearer (nothing after it)
	credBearerGarbage    = "bearer_garbage"      // Authorization: Bearer with a value that is no key
	credBearerGarbageJWT = "bearer_garbage_jwt"  // Authorization: Bearer with three dot-separated junk parts (JWT-shaped)
	credQueryGarbage     = "query_garbage_token" // ?token= junk
	credUnknownKey       = "unknown_key"         // a well-formed key the store never saw
	credRevokedKey       = "revoked_key"         // a task:write key of p1, revoked
	credOtherProject     = "other_project_key"   // a * key of p2 only
	credReadOnly         = "read_only_key"       // a task:read key of p1
	credClientToken      = "client_token"        // endpoint 9's client token for the row's run (write scope), as Bearer
	credClientTokenQ     = "client_token_query"  // the same as ?token=
	credReadToken        = "read_token"          // endpoint 9's client token minted by the read-only key (read scope), as Bearer
	credOtherRunToken    = "other_run_token"     // a client token for another run of p1, as Bearer
	credOtherRunTokenQ   = "other_run_token_query"
	credExpiredToken     = "expired_token" // a client token for the row's run, expired an hour ago, as Bearer
	credExpiredTokenQ    = "expired_token_query"
	credAgentToken       = "agent_token" // endpoint 9's agent token (?role=agent) for the row's run, as Bearer
	credAgentTokenQ      = "agent_token_query"
	credExpiredAgent     = "expired_agent_token"     // an agent token for the row's run, expired, as Bearer
	credAgentUnknownRun  = "agent_token_unknown_run" // a well-signed agent token for a run that does not exist
	// credRevokedKeyToken is a token minted by a key that was revoked
	// afterwards (a client token, or an agent token on /agent/connect).
	// Issue 10 item 5 makes such tokens fail; until tokens carry key_id the
	// cells of rows that take tokens are skipped (see revokedTokenCell).
	credRevokedKeyToken = "revoked_key_token"
	credWriteKey        = "write_key" // a task:write key of p1
)

// Credentials only /ws methods have: a token inside the JSON-RPC params
// of a connection that has none.
const (
	credParamClient   = "param_client_token" // client token (write scope) of the row's run
	credParamRead     = "param_read_token"   // client token (read scope) of the row's run
	credParamOtherRun = "param_other_run_token"
	credParamExpired  = "param_expired_token"
	credParamAgent    = "param_agent_token"
	credParamGarbage  = "param_garbage_token"
	// credParamRevoked: see credRevokedKeyToken.
	credParamRevoked = "param_revoked_key_token"
)

// Credentials only signed links have: the link's own query.
const (
	credSigned         = "signed_link"         // the link the API handed out
	credTampered       = "tampered_signature"  // one character of sig changed
	credExpiredSig     = "expired_signature"   // signed with an expiry in the past
	credOtherRunSigned = "other_run_signature" // another run's valid signature on this path
)

var (
	matrixCreds = []string{credNone, credBasic, credBearerEmpty, credBearerGarbage, credBearerGarbageJWT, credQueryGarbage,
		credUnknownKey, credRevokedKey, credOtherProject, credReadOnly,
		credClientToken, credClientTokenQ, credReadToken, credOtherRunToken, credOtherRunTokenQ,
		credExpiredToken, credExpiredTokenQ, credAgentToken, credAgentTokenQ, credExpiredAgent, credAgentUnknownRun,
		credRevokedKeyToken, credWriteKey}
	paramCreds = []string{credParamClient, credParamRead, credParamOtherRun, credParamExpired, credParamAgent, credParamGarbage, credParamRevoked}
	linkCreds  = []string{credSigned, credTampered, credExpiredSig, credOtherRunSigned}
)

// want is the answer a cell expects, and what a cell observed.
type want struct {
	status int                  // HTTP status, or 101 when the WebSocket upgrade went through
	code   string               // "code" of a standard error body
	msg    string               // the sentence of an {"error": msg} body
	close  websocket.StatusCode // the close code that ended the connection right after the upgrade
	rpc    int64                // /ws and agent: the JSON-RPC error code of the reply (0: a result)
}

func (w want) String() string {
	switch {
	case w.status == http.StatusSwitchingProtocols && w.close != 0:
		return fmt.Sprintf("upgraded, then close %d", w.close)
	case w.status == http.StatusSwitchingProtocols && w.rpc != 0:
		return fmt.Sprintf("upgraded, JSON-RPC error %d", w.rpc)
	case w.status == http.StatusSwitchingProtocols:
		return "upgraded, served"
	case w.code != "":
		return fmt.Sprintf("HTTP %d code %q", w.status, w.code)
	case w.msg != "":
		return fmt.Sprintf("HTTP %d error %q", w.status, w.msg)
	}
	return fmt.Sprintf("HTTP %d", w.status)
}

func status(s int) want { return want{status: s} }

var (
	unauthenticated = want{status: http.StatusUnauthorized, code: "not_authenticated"}
	badCredential   = want{status: http.StatusUnauthorized, code: "authentication_failed"}
	denied          = want{status: http.StatusForbidden, code: "permission_denied"}
	upgraded        = want{status: http.StatusSwitchingProtocols}
	closeBad        = want{status: http.StatusSwitchingProtocols, close: 4001}
	closeNotRun     = want{status: http.StatusSwitchingProtocols, close: 4003}
)

func rpcError(code int64) want { return want{status: http.StatusSwitchingProtocols, rpc: code} }

// transport is how a row's cells reach their route.
type transport int

const (
	overHTTP      transport = iota // one HTTP request
	overWebSocket                  // .../stream upgraded to a WebSocket: the first event arrives
	overRPC                        // one /ws JSON-RPC request on a fresh connection
	overAgent                      // /agent/connect, then one append_log
)

// matrixRow is one route (and transport, or /ws method) and the answer of
// every credential.
type matrixRow struct {
	route  string // method and path template as the router walk gives them, without the optional slash
	name   string // the variant: sse, websocket, or the /ws method
	over   transport
	method string                  // the /ws method
	path   string                  // concrete path when the template's own substitution is not enough
	body   func(fx *mxFixture) any // request body (nil: none)
	ctype  string                  // Content-Type prefix of the success answer
	tokens bool                    // the route takes connection or agent tokens
	signed bool                    // the route authenticates by its link's signature
	cells  map[string]want         // credential -> answer
}

// keyCells are the cells of an API-key route whose right key gets ok;
// write routes refuse the read-only key. Tokens open streams only: sent to
// a key route, a JWT is an unknown key, and ?token= is no credential.
func keyCells(ok want, write bool) map[string]want {
	c := map[string]want{
		credNone: unauthenticated, credBasic: unauthenticated, credBearerEmpty: unauthenticated,
		credBearerGarbage: badCredential, credBearerGarbageJWT: badCredential, credQueryGarbage: unauthenticated,
		credUnknownKey: badCredential, credRevokedKey: badCredential, credOtherProject: denied,
		credReadOnly: ok, credWriteKey: ok,
		credClientToken: badCredential, credClientTokenQ: unauthenticated, credReadToken: badCredential,
		credOtherRunToken: badCredential, credOtherRunTokenQ: unauthenticated,
		credExpiredToken: badCredential, credExpiredTokenQ: unauthenticated,
		credAgentToken: badCredential, credAgentTokenQ: unauthenticated, credExpiredAgent: badCredential,
		credAgentUnknownRun: badCredential, credRevokedKeyToken: badCredential,
	}
	if write {
		c[credReadOnly] = denied
	}
	return c
}

// streamCells are the cells of .../stream: a task:read key of the project
// or a client token of the run. Over a WebSocket a refused token is a
// close code after the upgrade (browsers cannot read a refused upgrade's
// status), a refused key the HTTP answer.
func streamCells(ok want, ws bool) map[string]want {
	badTok, notRun := badCredential, denied
	if ws {
		badTok, notRun = closeBad, closeNotRun
	}
	return map[string]want{
		credNone: unauthenticated, credBasic: unauthenticated, credBearerEmpty: unauthenticated,
		credBearerGarbage: badCredential, credBearerGarbageJWT: badTok, credQueryGarbage: badTok,
		credUnknownKey: badCredential, credRevokedKey: badCredential, credOtherProject: denied,
		credReadOnly: ok, credWriteKey: ok,
		credClientToken: ok, credClientTokenQ: ok, credReadToken: ok,
		credOtherRunToken: notRun, credOtherRunTokenQ: notRun,
		credExpiredToken: badTok, credExpiredTokenQ: badTok,
		credAgentToken: badTok, credAgentTokenQ: badTok, credExpiredAgent: badTok, credAgentUnknownRun: badTok,
		credRevokedKeyToken: badTok,
	}
}

// eventStreamCells: the event ingest takes a task:write key of the
// project or an ingest token of the run (none of the matrix's tokens is
// one), and answers in PostHog's shape: a JWT of another audience is an
// invalid ingest token, a bearer value that is no JWT an unknown key, and
// ?token= no credential at all.
func eventStreamCells(ok want) map[string]want {
	missing := want{status: http.StatusUnauthorized, msg: "Missing authorization bearer token"}
	badKey := want{status: http.StatusUnauthorized, msg: "Invalid personal API key"}
	badToken := want{status: http.StatusUnauthorized, code: "invalid_token", msg: "Invalid event ingest token"}
	return map[string]want{
		credNone: missing, credBasic: missing, credBearerEmpty: missing,
		credBearerGarbage: badKey, credBearerGarbageJWT: badToken, credQueryGarbage: missing,
		credUnknownKey: badKey, credRevokedKey: badKey,
		credOtherProject: {status: http.StatusForbidden, msg: "API key does not have access to this project."},
		credReadOnly:     {status: http.StatusForbidden, msg: "API key missing required scope 'task:write'"},
		credWriteKey:     ok,
		credClientToken:  badToken, credClientTokenQ: missing, credReadToken: badToken,
		credOtherRunToken: badToken, credOtherRunTokenQ: missing,
		credExpiredToken: badToken, credExpiredTokenQ: missing,
		credAgentToken: badToken, credAgentTokenQ: missing, credExpiredAgent: badToken,
		credAgentUnknownRun: badToken, credRevokedKeyToken: badToken,
	}
}

// wsAnswers is what a /ws method answers on an accepted connection, by
// who the caller is.
type wsAnswers struct {
	anonymous    want // no credential at all (each request must bring a token)
	otherProject want // a key that does not reach the run's project
	readKey      want
	writeKey     want
	readToken    want // a client token of the run with scope read
	writeToken   want // a client token of the run with scope write
	wrongToken   want // a client token of another run, or a bad token in params
}

// wsCells are the cells of a /ws method. The connection is refused only
// for what cannot be a caller: an unknown or revoked key (HTTP 401), or a
// connection token that does not verify (close 4001).
func wsCells(a wsAnswers) map[string]want {
	return map[string]want{
		credNone: a.anonymous, credBasic: a.anonymous, credBearerEmpty: a.anonymous,
		credBearerGarbage: badCredential, credBearerGarbageJWT: closeBad, credQueryGarbage: closeBad,
		credUnknownKey: badCredential, credRevokedKey: badCredential, credOtherProject: a.otherProject,
		credReadOnly: a.readKey, credWriteKey: a.writeKey,
		credClientToken: a.writeToken, credClientTokenQ: a.writeToken, credReadToken: a.readToken,
		credOtherRunToken: a.wrongToken, credOtherRunTokenQ: a.wrongToken,
		credExpiredToken: closeBad, credExpiredTokenQ: closeBad,
		credAgentToken: closeBad, credAgentTokenQ: closeBad, credExpiredAgent: closeBad, credAgentUnknownRun: closeBad,
		credRevokedKeyToken: closeBad,

		credParamClient: a.writeToken, credParamRead: a.readToken, credParamOtherRun: a.wrongToken,
		credParamExpired: a.wrongToken, credParamAgent: a.wrongToken, credParamGarbage: a.wrongToken,
		credParamRevoked: a.wrongToken,
	}
}

// agentCells: /agent/connect takes an agent token of a live run and
// nothing else (close 4001); a valid token for a run that does not exist
// is 4003.
func agentCells() map[string]want {
	c := map[string]want{}
	for _, cr := range matrixCreds {
		c[cr] = closeBad
	}
	c[credAgentToken], c[credAgentTokenQ] = upgraded, upgraded
	c[credAgentUnknownRun] = closeNotRun
	return c
}

// signedCells: a signed link authenticates by its signature alone; no key
// or token opens it, and a changed, expired or borrowed signature is 403.
func signedCells(ok want) map[string]want {
	c := map[string]want{}
	for _, cr := range matrixCreds {
		c[cr] = denied
	}
	c[credSigned] = ok
	c[credTampered], c[credExpiredSig], c[credOtherRunSigned] = denied, denied, denied
	return c
}

// publicCells: a public route ignores whatever credential comes with it.
func publicCells(ok want) map[string]want {
	c := map[string]want{}
	for _, cr := range matrixCreds {
		c[cr] = ok
	}
	return c
}

// Path templates of the contract, spelled out: a changed path is a
// changed contract and must fail here.
const (
	mxTasks = "/api/projects/{project_id}/tasks"
	mxTask  = mxTasks + "/{task_id}"
	mxRuns  = mxTask + "/runs"
	mxRun   = mxRuns + "/{run_id}"
)

func matrixRows() []matrixRow {
	json200 := want{status: http.StatusOK}
	body := func(v any) func(*mxFixture) any { return func(*mxFixture) any { return v } }
	rest := func(method, path string, write bool, ok want, b func(*mxFixture) any) matrixRow {
		return matrixRow{route: method + " " + path, body: b, cells: keyCells(ok, write)}
	}
	pub := func(route, path, ctype string) matrixRow {
		return matrixRow{route: route, path: path, ctype: ctype, cells: publicCells(json200)}
	}
	read := wsAnswers{anonymous: rpcError(hub.CodeForbidden), otherProject: rpcError(hub.CodeNotFound),
		readKey: upgraded, writeKey: upgraded, readToken: upgraded, writeToken: upgraded, wrongToken: rpcError(hub.CodeForbidden)}
	// command needs write access; with it the request reaches the proxy,
	// which finds no agent for the run.
	command := read
	command.readKey, command.readToken = rpcError(hub.CodeForbidden), rpcError(hub.CodeForbidden)
	command.writeKey, command.writeToken = rpcError(proxy.CodeNoAgent), rpcError(proxy.CodeNoAgent)
	// unsubscribe only drops the connection's own subscription: it
	// authorises nothing and answers every accepted connection.
	unsubscribe := wsAnswers{anonymous: upgraded, otherProject: upgraded, readKey: upgraded, writeKey: upgraded,
		readToken: upgraded, writeToken: upgraded, wrongToken: upgraded}
	ws := func(method string, a wsAnswers) matrixRow {
		return matrixRow{route: "GET /ws", name: method, over: overRPC, method: method, tokens: true, cells: wsCells(a)}
	}

	return []matrixRow{
		pub("GET /healthz", "", "application/json"),
		pub("HEAD /healthz", "", "application/json"),
		pub("GET /readyz", "", "application/json"),
		pub("HEAD /readyz", "", "application/json"),
		pub("GET /metrics", "", "text/plain"),
		pub("GET /api/schema", "", "application/json"),
		pub("GET /.well-known/jwks.json", "", "application/json"),
		pub("GET /", "", "text/html"),
		pub("GET /runs/{run_id}", "", "text/html"),
		pub("GET /static/", "/static/run.js", "text/javascript"),

		rest("GET", mxTasks, false, json200, nil),
		rest("POST", mxTasks, true, status(http.StatusCreated), body(map[string]any{"title": "matrix"})),
		rest("POST", mxTasks+"/summaries", false, json200, body(map[string]any{"ids": []string{}})),
		rest("GET", mxTask, false, json200, nil),
		rest("PATCH", mxTask, true, json200, body(map[string]any{"title": "matrix, renamed"})),
		rest("DELETE", mxTask, true, status(http.StatusNoContent), nil),
		rest("POST", mxTask+"/run", true, status(http.StatusCreated), body(map[string]any{})),
		rest("GET", mxRuns, false, json200, nil),
		rest("POST", mxRuns, true, status(http.StatusCreated), body(map[string]any{})),
		rest("GET", mxRun, false, json200, nil),
		rest("PATCH", mxRun, true, json200, body(map[string]any{"stage": "matrix"})),
		rest("POST", mxRun+"/append_log", true, json200, body(map[string]any{"entries": []any{map[string]any{"type": "matrix"}}})),
		rest("POST", mxRun+"/artifacts", true, json200, body(map[string]any{"artifacts": []any{
			map[string]any{"name": "more.txt", "type": "plan", "content": "more"}}})),
		rest("POST", mxRun+"/artifacts/presign", false, json200, func(fx *mxFixture) any {
			return map[string]any{"storage_path": fx.storagePath}
		}),
		rest("POST", mxRun+"/artifacts/download", false, json200, func(fx *mxFixture) any {
			return map[string]any{"storage_path": fx.storagePath}
		}),
		rest("POST", mxRun+"/artifacts/prepare_upload", true, json200, body(map[string]any{"artifacts": []any{
			map[string]any{"name": "direct.bin", "type": "output", "size": 5}}})),
		// The fixture's prepared and uploaded artifact: the first right
		// key adds it, the next ones find it there.
		rest("POST", mxRun+"/artifacts/finalize_upload", true, json200, func(fx *mxFixture) any {
			return map[string]any{"artifacts": []any{fx.finalize}}
		}),
		// With the right key the command reaches the proxy, which has no
		// agent for the run.
		rest("POST", mxRun+"/command", true, want{status: http.StatusBadRequest, msg: "No active sandbox for this task run"},
			body(map[string]any{"jsonrpc": "2.0", "method": "cancel"})),
		rest("POST", mxRun+"/start", true, json200, body(map[string]any{"pending_user_message": "go"})),
		rest("POST", mxRun+"/cancel", true, json200, nil),
		rest("POST", mxRun+"/resume_in_cloud", true, status(http.StatusCreated), nil),
		rest("GET", mxRun+"/connection_token", false, json200, nil),
		rest("GET", mxRun+"/stream_token", false, json200, nil),
		rest("GET", mxRun+"/logs", false, json200, nil),
		rest("POST", mxRun+"/relay_message", true, json200, body(map[string]any{"text": "hello"})),
		rest("GET", mxRun+"/session_logs", false, json200, nil),
		rest("PATCH", mxRun+"/set_output", true, json200, body(map[string]any{"output": map[string]any{"ok": true}})),

		{route: "POST " + mxRun + "/event_stream", body: body(map[string]any{"seq": 1, "event": map[string]any{"type": "matrix"}}),
			cells: eventStreamCells(json200)},

		{route: "GET " + mxRun + "/stream", name: "sse", ctype: "text/event-stream", tokens: true, cells: streamCells(json200, false)},
		{route: "GET " + mxRun + "/stream", name: "websocket", over: overWebSocket, tokens: true, cells: streamCells(upgraded, true)},

		ws("subscribe", read),
		ws("unsubscribe", unsubscribe),
		ws("command", command),
		ws("history", read),

		{route: "GET /agent/connect", over: overAgent, tokens: true, cells: agentCells()},

		{route: "GET /logs/{run_id}.jsonl", signed: true, ctype: "application/jsonl", cells: signedCells(json200)},
		{route: "GET /blobs/{key:.+}", signed: true, cells: signedCells(json200)},
		{route: "POST /uploads/{key:.+}", signed: true, body: func(fx *mxFixture) any { return fx.uploadForm },
			cells: signedCells(status(http.StatusNoContent))},
	}
}

// mxEnv is a whole node as serve builds it (hub, proxy, tokens, the
// filesystem blob store with signed links, the viewer) on the test env.
type mxEnv struct {
	*env
	tokens  *tokens.Tokens
	expired *tokens.Tokens // the same key, with a clock a day and an hour behind
	signer  *blob.Signer
	router  *mux.Router

	revokedKey string
	unknownKey string
	other      *mxFixture // another run of p1
	revokedAt  time.Time  // when the key behind revoked_key_token was revoked
}

func newMxEnv(t *testing.T) *mxEnv {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	past, err := tokens.Load(tokens.Config{PrivateKeyPEM: keyPEM,
		Now: func() time.Time { return time.Now().Add(-tokens.TTL - time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := blob.NewFS(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := blob.LoadSigner(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mx := &mxEnv{expired: past, signer: signer}
	// A whole node, wired by hand as cmd/node does: this test is in package
	// rest (it reads the router), which cmd/node imports.
	mx.env = newEnv(t, func(c *Config) {
		rv := tokens.NewRevocations(tokens.RevocationConfig{Store: c.Store, Interval: 50 * time.Millisecond, Window: 2 * time.Second})
		if err := rv.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rv.Close)
		tk, err := tokens.Load(tokens.Config{PrivateKeyPEM: keyPEM, Revocations: rv})
		if err != nil {
			t.Fatal(err)
		}
		mx.tokens = tk
		broker := hub.NewMemoryBroker()
		svc, err := runs.New(runs.Config{Store: c.Store, Publisher: broker})
		if err != nil {
			t.Fatal(err)
		}
		px, err := proxy.New(proxy.Config{Tokens: tk, Runs: svc, Store: c.Store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(px.Close)
		h, err := hub.New(hub.Config{Store: c.Store, Broker: broker, Commands: px.WSCommand, Guard: rv})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		c.Runs, c.Stream, c.WS, c.Tokens, c.Commands, c.Agent = svc, h.ServeStream, h.ServeWS, tk, px, px.ServeAgent
		c.Blobs, c.Files, c.Signer = files, files, signer
		c.Extra = web.Mount
	})
	mx.router = mx.srv.Config.Handler.(*Server).router
	var id int64
	mx.revokedKey, id = mx.newKey([]string{store.ScopeWrite}, false, mx.p1)
	if err := mx.st.RevokeAPIKey(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	mx.unknownKey, _, _ = store.GenerateAPIKey()
	return mx
}

// mxFixture is a row's own task and run in p1, with one artifact, and the
// credentials that name them.
type mxFixture struct {
	task, run    string
	storagePath  string
	blobPath     string     // /blobs/... of the artifact
	blobLink     url.Values // its signed query
	uploadPath   string     // /uploads/... of a prepared upload (not sent)
	uploadLink   url.Values // its signed query
	uploadForm   rawBody    // the form that uploads it
	finalize     any        // the finalize item of a prepared upload that was sent
	logLink      url.Values // the signed query of the run's log_url
	clientToken  string     // scope write, minted by the write key
	readToken    string     // scope read, minted by the read-only key
	agentToken   string
	expiredToken string
	expiredAgent string
	agentUnknown string
	// Minted by a key revoked once every fixture exists.
	revokedClient, revokedAgent string
}

// newFixture makes a row's task, run, artifact and tokens; revoker is the
// write key the revoked-key tokens come from.
func (mx *mxEnv) newFixture(t *testing.T, revoker string) *mxFixture {
	t.Helper()
	f := mx.fixture()
	fx := &mxFixture{task: f.task, run: f.run}
	res := mx.do(req{Method: "POST", Path: f.path(mx.env, "/artifacts/"), Key: mx.writeKey, Body: map[string]any{
		"artifacts": []any{map[string]any{"name": "matrix.txt", "type": "plan", "content": "matrix bytes"}}}})
	wantStatus(t, res, http.StatusOK)
	var manifest struct {
		Artifacts []struct {
			StoragePath string `json:"storage_path"`
		} `json:"artifacts"`
	}
	if err := json.Unmarshal(res.body, &manifest); err != nil || len(manifest.Artifacts) != 1 {
		t.Fatalf("artifacts: %v %s", err, res)
	}
	fx.storagePath = manifest.Artifacts[0].StoragePath
	res = mx.do(req{Method: "POST", Path: f.path(mx.env, "/artifacts/presign/"), Key: mx.readKey,
		Body: map[string]any{"storage_path": fx.storagePath}})
	wantStatus(t, res, http.StatusOK)
	fx.blobPath, fx.blobLink = splitLink(t, obj(t, res)["url"])
	res = mx.do(req{Method: "GET", Path: f.path(mx.env, "/"), Key: mx.readKey})
	wantStatus(t, res, http.StatusOK)
	_, fx.logLink = splitLink(t, obj(t, res)["log_url"])
	res = mx.do(req{Method: "POST", Path: f.path(mx.env, "/artifacts/prepare_upload/"), Key: mx.writeKey, Body: map[string]any{
		"artifacts": []any{map[string]any{"name": "up.bin", "type": "output", "size": 3}, map[string]any{"name": "done.bin", "type": "output", "size": 3}}}})
	wantStatus(t, res, http.StatusOK)
	var prep struct{ Artifacts []prepared }
	if err := json.Unmarshal(res.body, &prep); err != nil || len(prep.Artifacts) != 2 {
		t.Fatalf("prepare_upload: %v %s", err, res)
	}
	fx.uploadPath, fx.uploadLink = splitLink(t, prep.Artifacts[0].PresignedPost.URL)
	ct, form := formBody(prep.Artifacts[0].PresignedPost.Fields, []byte("abc"))
	fx.uploadForm = rawBody{ctype: ct, data: form.Bytes()}
	if st, b := postUpload(t, prep.Artifacts[1], []byte("xyz")); st != http.StatusNoContent {
		t.Fatalf("upload: %d %s", st, b)
	}
	fx.finalize = finalizeItem(prep.Artifacts[1])

	mint := func(key, query string) string {
		res := mx.do(req{Method: "GET", Path: f.path(mx.env, "/connection_token/") + query, Key: key})
		wantStatus(t, res, http.StatusOK)
		return obj(t, res)["token"].(string)
	}
	fx.clientToken = mint(mx.writeKey, "")
	fx.readToken = mint(mx.readKey, "")
	fx.agentToken = mint(mx.writeKey, "?role=agent")
	fx.revokedClient = mint(revoker, "")
	fx.revokedAgent = mint(revoker, "?role=agent")
	claims := tokens.Claims{RunID: fx.run, TaskID: fx.task, TeamID: mx.p1, UserID: 1, DistinctID: "matrix", Scope: "write"}
	var err error
	if fx.expiredToken, _, err = mx.expired.Mint(claims, tokens.AudienceClient); err != nil {
		t.Fatal(err)
	}
	if fx.expiredAgent, _, err = mx.expired.Mint(claims, tokens.AudienceAgent); err != nil {
		t.Fatal(err)
	}
	claims.RunID = randomUUID
	if fx.agentUnknown, _, err = mx.tokens.Mint(claims, tokens.AudienceAgent); err != nil {
		t.Fatal(err)
	}
	return fx
}

// splitLink splits an absolute link into its path and query.
func splitLink(t *testing.T, v any) (string, url.Values) {
	t.Helper()
	s, _ := v.(string)
	u, err := url.Parse(s)
	if err != nil || s == "" {
		t.Fatalf("link %v: %v", v, err)
	}
	return u.EscapedPath(), u.Query()
}

// credential is how a cell presents itself.
type credential struct {
	header string     // Authorization header ("": none)
	token  string     // ?token=
	param  string     // "token" inside /ws params
	link   url.Values // a signed link's query
}

// credential builds cred for row on fx.
func (mx *mxEnv) credential(cred string, row *matrixRow, fx *mxFixture) credential {
	bearer := func(s string) credential { return credential{header: "Bearer " + s} }
	revoked := fx.revokedClient
	if row.over == overAgent {
		revoked = fx.revokedAgent
	}
	// A signed link's query with sig changed by one character.
	tampered := func() url.Values {
		q := url.Values{}
		for k, v := range fx.linkOf(row) {
			q[k] = slices.Clone(v)
		}
		sig := []byte(q.Get("sig"))
		sig[len(sig)/2] ^= 1
		q.Set("sig", string(sig))
		return q
	}
	switch cred {
	case credNone:
		return credential{}
	case credBasic:
		return credential{header: "Basic " + base64.StdEncoding.EncodeToString([]byte(mx.writeKey+":"))}
	case credBearerEmpty:
		return credential{header: "Bearer"}
	case credBearerGarbage:
		return bearer("not-a-key")
	case credBearerGarbageJWT:
		return bearer("eyJub3Q.YS50b2tlbg.c2ln")
	case credQueryGarbage:
		return credential{token: "eyJub3Q.YS50b2tlbg.c2ln"}
	case credUnknownKey:
		return bearer(mx.unknownKey)
	case credRevokedKey:
		return bearer(mx.revokedKey)
	case credOtherProject:
		return bearer(mx.otherKey)
	case credReadOnly:
		return bearer(mx.readKey)
	case credWriteKey:
		return bearer(mx.writeKey)
	case credClientToken:
		return bearer(fx.clientToken)
	case credClientTokenQ:
		return credential{token: fx.clientToken}
	case credReadToken:
		return bearer(fx.readToken)
	case credOtherRunToken:
		return bearer(mx.other.clientToken)
	case credOtherRunTokenQ:
		return credential{token: mx.other.clientToken}
	case credExpiredToken:
		return bearer(fx.expiredToken)
	case credExpiredTokenQ:
		return credential{token: fx.expiredToken}
	case credAgentToken:
		return bearer(fx.agentToken)
	case credAgentTokenQ:
		return credential{token: fx.agentToken}
	case credExpiredAgent:
		return bearer(fx.expiredAgent)
	case credAgentUnknownRun:
		return bearer(fx.agentUnknown)
	case credRevokedKeyToken:
		return bearer(revoked)
	case credParamClient:
		return credential{param: fx.clientToken}
	case credParamRead:
		return credential{param: fx.readToken}
	case credParamOtherRun:
		return credential{param: mx.other.clientToken}
	case credParamExpired:
		return credential{param: fx.expiredToken}
	case credParamAgent:
		return credential{param: fx.agentToken}
	case credParamGarbage:
		return credential{param: "eyJub3Q.YS50b2tlbg.c2ln"}
	case credParamRevoked:
		return credential{param: fx.revokedClient}
	case credSigned:
		return credential{link: fx.linkOf(row)}
	case credTampered:
		return credential{link: tampered()}
	case credExpiredSig:
		return credential{link: mx.expiredLink(row, fx)}
	case credOtherRunSigned:
		return credential{link: mx.other.linkOf(row)}
	}
	panic("unknown credential " + cred)
}

// linkOf is the signed query the API gave for row's resource.
func (fx *mxFixture) linkOf(row *matrixRow) url.Values {
	if strings.HasPrefix(row.route, "GET /blobs/") {
		return fx.blobLink
	}
	if strings.HasPrefix(row.route, "POST /uploads/") {
		return fx.uploadLink
	}
	return fx.logLink
}

// expiredLink signs row's link of fx with the server's signer and an
// expiry a minute ago.
func (mx *mxEnv) expiredLink(row *matrixRow, fx *mxFixture) url.Values {
	params := url.Values{}
	for k, v := range fx.linkOf(row) {
		if k != "sig" && k != "exp" {
			params[k] = v
		}
	}
	method, _, _ := strings.Cut(row.route, " ")
	return mx.signer.Sign(method, mx.path(row, fx), params, -time.Minute)
}

// path is row's concrete path on fx.
func (mx *mxEnv) path(row *matrixRow, fx *mxFixture) string {
	if row.path != "" {
		return row.path
	}
	_, tpl, _ := strings.Cut(row.route, " ")
	if strings.HasPrefix(tpl, "/blobs/") {
		return fx.blobPath
	}
	if strings.HasPrefix(tpl, "/uploads/") {
		return fx.uploadPath
	}
	return strings.NewReplacer("{project_id}", strconv.FormatInt(mx.p1, 10), "{task_id}", fx.task, "{run_id}", fx.run).Replace(tpl)
}

// observe runs one cell and reports what happened; a failure to run it at
// all is an error.
func (mx *mxEnv) observe(row *matrixRow, fx *mxFixture, cr credential) (want, *resp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	method, _, _ := strings.Cut(row.route, " ")
	q := url.Values{}
	for k, v := range cr.link {
		q[k] = v
	}
	if cr.token != "" {
		q.Set("token", cr.token)
	}
	target := mx.path(row, fx)
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	h := http.Header{}
	if cr.header != "" {
		h.Set("Authorization", cr.header)
	}
	if row.over != overHTTP {
		return mx.observeWS(ctx, row, fx, cr, target, h)
	}
	var body io.Reader
	if row.body != nil {
		if rb, ok := row.body(fx).(rawBody); ok {
			body = bytes.NewReader(rb.data)
			h.Set("Content-Type", rb.ctype)
		} else {
			b, err := json.Marshal(row.body(fx))
			if err != nil {
				return want{}, nil, err
			}
			body = strings.NewReader(string(b))
			h.Set("Content-Type", "application/json")
		}
	}
	hr, err := http.NewRequestWithContext(ctx, method, mx.srv.URL+target, body)
	if err != nil {
		return want{}, nil, err
	}
	hr.Header = h
	if row.name == "sse" {
		hr.Header.Set("Accept", "text/event-stream")
	}
	res, err := mx.client.Do(hr)
	if err != nil {
		return want{}, nil, err
	}
	defer res.Body.Close()
	out := &resp{status: res.StatusCode, header: res.Header}
	// A live stream never ends: its headers are the answer.
	if !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		if out.body, err = io.ReadAll(res.Body); err != nil {
			return want{}, nil, err
		}
	}
	return outcomeOf(out), out, nil
}

// rawBody is a request body sent as it is, not as JSON (an upload form).
type rawBody struct {
	ctype string
	data  []byte
}

// outcomeOf reads status and error body of an HTTP answer.
func outcomeOf(r *resp) want {
	got := want{status: r.status}
	if r.status >= 400 {
		var m struct {
			Code  string `json:"code"`
			Error string `json:"error"`
		}
		json.Unmarshal(r.body, &m)
		got.code, got.msg = m.Code, m.Error
	}
	return got
}

// observeWS dials a WebSocket route and does what the row's transport
// does on it: read the first event, or send one JSON-RPC request and
// read its reply.
func (mx *mxEnv) observeWS(ctx context.Context, row *matrixRow, fx *mxFixture, cr credential, target string, h http.Header) (want, *resp, error) {
	// Counted before the dial: this connection's own agent_connected
	// must not be taken for an earlier one's.
	var agentsBefore int
	if row.over == overAgent {
		var err error
		if agentsBefore, _, err = mx.agentEvents(ctx, fx.run); err != nil {
			return want{}, nil, err
		}
	}
	c, hres, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(mx.srv.URL, "http")+target, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		if hres == nil {
			return want{}, nil, err
		}
		out := &resp{status: hres.StatusCode, header: hres.Header}
		if hres.Body != nil {
			out.body, _ = io.ReadAll(hres.Body)
		}
		return outcomeOf(out), out, nil
	}
	defer c.CloseNow()
	got := upgraded
	closed := func(err error) (want, *resp, error) {
		if code := websocket.CloseStatus(err); code != -1 {
			got.close = code
			return got, nil, nil
		}
		return want{}, nil, fmt.Errorf("read: %w", err)
	}
	var request map[string]any
	switch row.over {
	case overWebSocket:
		_, b, err := c.Read(ctx)
		if err != nil {
			return closed(err)
		}
		if !strings.Contains(string(b), `"seq":1`) {
			return want{}, nil, fmt.Errorf("first message is not the run's first event: %s", b)
		}
		return got, nil, nil
	case overAgent:
		request = map[string]any{"jsonrpc": "2.0", "id": 1, "method": "append_log",
			"params": map[string]any{"entries": []any{map[string]any{"type": "matrix"}}}}
	case overRPC:
		params := map[string]any{"run_id": fx.run}
		switch row.method {
		case "command":
			params["method"] = "cancel"
		case "history":
			params["before"] = 100
		}
		if cr.param != "" {
			params["token"] = cr.param
		}
		request = map[string]any{"jsonrpc": "2.0", "id": 1, "method": row.method, "params": params}
	}
	b, _ := json.Marshal(request)
	// A refused connection may be closed before the write: the read below
	// tells how.
	_ = c.Write(ctx, websocket.MessageText, b)
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return closed(err)
		}
		var m struct {
			ID     *int64          `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code int64 `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return want{}, nil, fmt.Errorf("reply %s: %w", b, err)
		}
		if m.ID == nil || *m.ID != 1 {
			continue // a notification (event, stream_end)
		}
		if m.Error != nil {
			got.rpc = m.Error.Code
		} else if len(m.Result) == 0 || string(m.Result) == "null" {
			return want{}, nil, fmt.Errorf("reply has neither result nor error: %s", b)
		}
		c.Close(websocket.StatusNormalClosure, "")
		if row.over == overAgent && got.rpc == 0 {
			// The next cell's agent must not meet this one (it would be
			// replaced, 4009): wait until the proxy has let it go.
			if err := mx.waitAgentGone(ctx, fx.run, agentsBefore+1); err != nil {
				return want{}, nil, err
			}
		}
		return got, nil, nil
	}
}

// agentEvents counts the agent_connected and agent_disconnected events of
// run.
func (mx *mxEnv) agentEvents(ctx context.Context, run string) (connected, disconnected int, err error) {
	evs, err := mx.st.Events(ctx, run, 0, 5000)
	if err != nil {
		return 0, 0, fmt.Errorf("events: %w", err)
	}
	for _, ev := range evs {
		switch {
		case strings.Contains(string(ev.Data), `"agent_connected"`):
			connected++
		case strings.Contains(string(ev.Data), `"agent_disconnected"`):
			disconnected++
		}
	}
	return connected, disconnected, nil
}

// waitAgentGone waits until run has seen connections agent connections
// and every one has recorded its disconnection, which the proxy does after
// it forgot the session.
func (mx *mxEnv) waitAgentGone(ctx context.Context, run string, connections int) error {
	for {
		c, d, err := mx.agentEvents(ctx, run)
		if err != nil {
			return err
		}
		if c >= connections && d == c {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent of run %s still connected: %w", run, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// revocationDeadline is how long after a revocation its tokens may still
// work: the contract's 5 s, plus a margin for a loaded test machine.
const revocationDeadline = 7 * time.Second

// hasKeyID reports whether a JWT carries the key_id claim of issue 10
// item 5.
func hasKeyID(t *testing.T, tok string) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	_, ok := claims["key_id"]
	return ok
}

// TestRouteCredentialMatrix tries every route of the router (each /ws
// method and each transport of .../stream on its own) with every kind of
// credential, and checks the status, error code, close code or JSON-RPC
// error the contract gives. A route without a row, or a row without a
// route, fails the test.
func TestRouteCredentialMatrix(t *testing.T) {
	mx := newMxEnv(t)
	rows := matrixRows()
	checkMatrixCoversRouter(t, mx.router, rows)
	checkMatrixCoversWSMethods(t, rows)
	for i := range rows {
		checkCells(t, &rows[i])
	}
	if t.Failed() {
		return
	}

	// Every fixture first, then one revocation for all their
	// revoked-key tokens, so that the revocation has time to reach every
	// node's view while the cells run.
	revoker, revokerID := mx.newKey([]string{store.ScopeWrite}, false, mx.p1)
	mx.other = mx.newFixture(t, revoker)
	fixtures := make([]*mxFixture, len(rows))
	for i := range rows {
		fixtures[i] = mx.newFixture(t, revoker)
	}
	if err := mx.st.RevokeAPIKey(context.Background(), revokerID); err != nil {
		t.Fatal(err)
	}
	mx.revokedAt = time.Now()
	keyIDs := hasKeyID(t, mx.other.revokedClient)

	for i := range rows {
		row, fx := &rows[i], fixtures[i]
		name := strings.NewReplacer("{", "", "}", "", ":", "", "+", "").Replace(row.route)
		if row.name != "" {
			name += "/" + row.name
		}
		t.Run(name, func(t *testing.T) {
			for _, cred := range rowCreds(row) {
				t.Run(cred, func(t *testing.T) {
					w := row.cells[cred]
					revokedToken := cred == credRevokedKeyToken || cred == credParamRevoked
					if revokedToken && row.tokens && !keyIDs {
						// For the lead, after merging issue 10 item 5:
						// this cell must run and pass.
						t.Skip("tokens carry no key_id yet (issue 10 item 5): a token minted by a revoked key still works; checked after the merge")
					}
					cr := mx.credential(cred, row, fx)
					got, res, err := mx.observe(row, fx, cr)
					// Revocation reaches a node by polling: give it the
					// contract's time.
					for revokedToken && err == nil && got != w && time.Since(mx.revokedAt) < revocationDeadline {
						time.Sleep(100 * time.Millisecond)
						got, res, err = mx.observe(row, fx, cr)
					}
					if err != nil {
						t.Fatalf("want %v: %v", w, err)
					}
					if got != w {
						detail := ""
						if res != nil {
							detail = ": " + res.String()
						}
						t.Errorf("got %v, want %v%s", got, w, detail)
					}
					if res != nil {
						method, _, _ := strings.Cut(row.route, " ")
						checkInvariants(t, req{Method: method, Path: mx.path(row, fx)}, res)
						if res.status < 300 && row.ctype != "" && !strings.HasPrefix(res.header.Get("Content-Type"), row.ctype) {
							t.Errorf("Content-Type %q, want %s...", res.header.Get("Content-Type"), row.ctype)
						}
					}
				})
			}
		})
	}
}

// rowCreds are the credentials row is tried with.
func rowCreds(row *matrixRow) []string {
	creds := slices.Clone(matrixCreds)
	if row.over == overRPC {
		creds = append(creds[:len(creds)-1], append(slices.Clone(paramCreds), credWriteKey)...)
	}
	if row.signed {
		creds = append(creds, linkCreds...)
	}
	return creds
}

// checkCells fails when row lacks an answer for one of its credentials or
// has one for a credential it is not tried with.
func checkCells(t *testing.T, row *matrixRow) {
	t.Helper()
	creds := rowCreds(row)
	for _, c := range creds {
		if _, ok := row.cells[c]; !ok {
			t.Errorf("row %s %s: no answer for credential %s", row.route, row.name, c)
		}
	}
	for c := range row.cells {
		if !slices.Contains(creds, c) {
			t.Errorf("row %s %s: answer for credential %s, which the row is not tried with", row.route, row.name, c)
		}
	}
}

// walkRoutes lists "METHOD template" of every route of r, the optional
// trailing slash left out.
func walkRoutes(t *testing.T, r *mux.Router) []string {
	t.Helper()
	var out []string
	err := r.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return fmt.Errorf("route without a path template: %w", err)
		}
		tpl = strings.TrimSuffix(tpl, slash)
		methods, err := route.GetMethods()
		if err != nil {
			// A route for every method needs a row for "*".
			methods = []string{"*"}
		}
		for _, m := range methods {
			out = append(out, m+" "+tpl)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	sort.Strings(out)
	return out
}

// checkMatrixCoversRouter fails for a walked route without a row and for a
// row whose route the router does not have.
func checkMatrixCoversRouter(t *testing.T, r *mux.Router, rows []matrixRow) {
	t.Helper()
	walked := walkRoutes(t, r)
	if len(walked) < 30 {
		t.Fatalf("the walk found only %d routes (%v): is the server built whole?", len(walked), walked)
	}
	have := map[string]bool{}
	for _, row := range rows {
		have[row.route] = true
	}
	for _, w := range walked {
		if !have[w] {
			t.Errorf("route %q has no row in the credential matrix: add one to matrixRows", w)
		}
		delete(have, w)
	}
	for stale := range have {
		t.Errorf("matrix row %q names no route of the router: remove or fix it", stale)
	}
}

// wsMethods lists the JSON-RPC methods /ws dispatches on, read from the
// hub's source: every string literal compared with req.Method (== or a
// switch case). The hub has no list of them to ask, and a method added
// there must not go without matrix rows.
func wsMethods(t *testing.T) []string {
	t.Helper()
	dir := filepath.Join("..", "hub")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	isReqMethod := func(e ast.Expr) bool {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return false
		}
		id, ok := sel.X.(*ast.Ident)
		return ok && id.Name == "req" && sel.Sel.Name == "Method"
	}
	found := map[string]bool{}
	lit := func(e ast.Expr) {
		if bl, ok := e.(*ast.BasicLit); ok && bl.Kind == gotoken.STRING {
			if s, err := strconv.Unquote(bl.Value); err == nil {
				found[s] = true
			}
		}
	}
	fset := gotoken.NewFileSet()
	for _, de := range entries {
		name := de.Name()
		if de.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BinaryExpr:
				if n.Op == gotoken.EQL && isReqMethod(n.X) {
					lit(n.Y)
				}
			case *ast.SwitchStmt:
				if n.Tag != nil && isReqMethod(n.Tag) {
					for _, s := range n.Body.List {
						for _, e := range s.(*ast.CaseClause).List {
							lit(e)
						}
					}
				}
			}
			return true
		})
	}
	out := make([]string, 0, len(found))
	for m := range found {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// checkMatrixCoversWSMethods fails for a /ws method without a row and for
// a row of a method the hub does not serve.
func checkMatrixCoversWSMethods(t *testing.T, rows []matrixRow) {
	t.Helper()
	methods := wsMethods(t)
	if len(methods) == 0 {
		t.Fatal("found no /ws method in the hub's source: the scan in wsMethods must follow how the hub dispatches")
	}
	have := map[string]bool{}
	for _, row := range rows {
		if row.over == overRPC {
			have[row.method] = true
		}
	}
	for _, m := range methods {
		if !have[m] {
			t.Errorf("/ws method %q has no row in the credential matrix", m)
		}
		delete(have, m)
	}
	for stale := range have {
		t.Errorf("matrix row for /ws method %q, which the hub does not serve", stale)
	}
}
