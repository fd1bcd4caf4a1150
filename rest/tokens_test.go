package rest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"runhub/hub"
	"runhub/proxy/tokens"
	"runhub/store/runs"
)

// tokenEnv is an env with connection tokens (a key the test knows) and
// the real hub behind the stream endpoints.
type tokenEnv struct {
	*env
	key    *rsa.PrivateKey
	tokens *tokens.Tokens
}

func newTokenEnv(t *testing.T) *tokenEnv { return newTokenEnvWith(t, tokens.Config{}) }

// newTokenEnvWith is newTokenEnv with the tokens configured as cfg (its
// key is the test's).
func newTokenEnvWith(t *testing.T, cfg tokens.Config) *tokenEnv {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	cfg.PrivateKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	tk, err := tokens.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	te := &tokenEnv{key: key, tokens: tk}
	te.env = newEnv(t, func(c *Config) {
		broker := hub.NewMemoryBroker()
		h, err := hub.New(hub.Config{Store: c.Store, Broker: broker})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		c.Stream, c.WS, c.Tokens = h.ServeStream, h.ServeWS, tk
		if c.Runs, err = runs.New(runs.Config{Store: c.Store, Publisher: broker}); err != nil {
			t.Fatal(err)
		}
	})
	return te
}

// mint asks endpoint 9 for a token with key.
func (te *tokenEnv) mint(t *testing.T, f fixture, key, query string) (connectionTokenBody, *resp) {
	t.Helper()
	res := te.do(req{Method: "GET", Path: f.path(te.env, "/connection_token/") + query, Key: key})
	var b connectionTokenBody
	if res.status == http.StatusOK {
		if err := json.Unmarshal(res.body, &b); err != nil {
			t.Fatal(err)
		}
	}
	return b, res
}

// sign makes a token with the env's key, claims as given (forgeries).
func (te *tokenEnv) sign(t *testing.T, method jwt.SigningMethod, secret any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	kid, _ := tokens.KeyID(&te.key.PublicKey)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(f fixture, project int64, aud string, exp time.Time) jwt.MapClaims {
	return jwt.MapClaims{"run_id": f.run, "task_id": f.task, "team_id": project, "user_id": 1, "distinct_id": "x",
		"scope": "read", "aud": aud, "exp": exp.Unix(), "iat": time.Now().Unix()}
}

// TestConnectionTokenEndpoint: endpoint 9 mints client tokens (scope write
// only for a task:write key), agent tokens for task:write keys, with the
// contract's claims, a 24 h expiry and the WebSocket URL to use; the JWKS
// publishes the key that verifies them.
func TestConnectionTokenEndpoint(t *testing.T) {
	te := newTokenEnv(t)
	f := te.fixture()

	rb, res := te.mint(t, f, te.readKey, "")
	wantStatus(t, res, http.StatusOK)
	c, err := te.tokens.Verify(rb.Token, tokens.AudienceClient)
	if err != nil {
		t.Fatalf("minted token: %v", err)
	}
	if c.RunID != f.run || c.TaskID != f.task || c.TeamID != te.p1 || c.Scope != "read" || c.ID == "" {
		t.Errorf("claims %+v", c)
	}
	if d := time.Until(rb.ExpiresAt); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("expires_at %v", rb.ExpiresAt)
	}
	if !strings.HasPrefix(rb.WSURL, "ws://") || !strings.HasSuffix(rb.WSURL, f.path(te.env, "/stream")) {
		t.Errorf("ws_url %q", rb.WSURL)
	}

	wb, res := te.mint(t, f, te.writeKey, "")
	wantStatus(t, res, http.StatusOK)
	if c, err := te.tokens.Verify(wb.Token, tokens.AudienceClient); err != nil || c.Scope != "write" {
		t.Errorf("write key's token: %+v %v", c, err)
	}
	ab, res := te.mint(t, f, te.writeKey, "?role=agent")
	wantStatus(t, res, http.StatusOK)
	if _, err := te.tokens.Verify(ab.Token, tokens.AudienceAgent); err != nil || !strings.HasSuffix(ab.WSURL, "/agent/connect") {
		t.Errorf("agent token: %v, ws_url %q", err, ab.WSURL)
	}
	if _, err := te.tokens.Verify(ab.Token, tokens.AudienceClient); err == nil {
		t.Error("agent token verifies as a client token")
	}
	_, res = te.mint(t, f, te.readKey, "?role=agent")
	wantAPIError(t, res, http.StatusForbidden, "authentication_error", "")
	_, res = te.mint(t, f, te.readKey, "?role=admin")
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "role")
	_, res = te.mint(t, f, te.otherKey, "")
	wantStatus(t, res, http.StatusForbidden)
	_, res = te.mint(t, f, "", "")
	wantStatus(t, res, http.StatusUnauthorized)
	_, res = te.mint(t, fixture{task: f.task, run: "00000000-0000-4000-8000-000000000000"}, te.readKey, "")
	wantStatus(t, res, http.StatusNotFound)

	// The JWKS verifies the token's signature on its own.
	res = te.do(req{Method: "GET", Path: "/.well-known/jwks.json"})
	wantStatus(t, res, http.StatusOK)
	var jwks struct {
		Keys []struct{ Kty, Use, Alg, Kid, N, E string }
	}
	if err := json.Unmarshal(res.body, &jwks); err != nil || len(jwks.Keys) != 1 {
		t.Fatalf("jwks %s: %v", res.body, err)
	}
	k := jwks.Keys[0]
	n, _ := base64.RawURLEncoding.DecodeString(k.N)
	e, _ := base64.RawURLEncoding.DecodeString(k.E)
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if k.Kty != "RSA" || k.Alg != "RS256" || k.Use != "sig" {
		t.Errorf("jwk %+v", k)
	}
	parsed, err := jwt.Parse(rb.Token, func(tok *jwt.Token) (any, error) {
		if tok.Header["kid"] != k.Kid {
			return nil, errors.New("kid mismatch")
		}
		return pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(tokens.AudienceClient))
	if err != nil || !parsed.Valid {
		t.Fatalf("token does not verify with the JWKS key: %v", err)
	}
}

// TestStreamTokenRefusals: the stream endpoint admits a client token for
// its run (SSE and WebSocket) and refuses every bad one: 401/403 on plain
// HTTP, close 4001/4003 on a WebSocket.
func TestStreamTokenRefusals(t *testing.T) {
	te := newTokenEnv(t)
	f := te.fixture()
	g := te.fixture() // another run
	good, _ := te.mint(t, f, te.readKey, "")
	otherRun, _ := te.mint(t, g, te.readKey, "")
	agent, _ := te.mint(t, f, te.writeKey, "?role=agent")
	pubDER, _ := x509.MarshalPKIXPublicKey(&te.key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	unknownKid := jwt.NewWithClaims(jwt.SigningMethodRS256, claimsFor(f, te.p1, tokens.AudienceClient, time.Now().Add(time.Hour)))
	unknownKid.Header["kid"] = "0123456789abcdef"
	unknownKidTok, _ := unknownKid.SignedString(otherKey)
	tampered := []byte(good.Token)
	tampered[len(tampered)-5] ^= 1

	bad := map[string]string{
		"agent audience":   agent.Token,
		"expired":          te.sign(t, jwt.SigningMethodRS256, te.key, claimsFor(f, te.p1, tokens.AudienceClient, time.Now().Add(-time.Minute))),
		"alg none":         te.sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claimsFor(f, te.p1, tokens.AudienceClient, time.Now().Add(time.Hour))),
		"hs256 public key": te.sign(t, jwt.SigningMethodHS256, pubPEM, claimsFor(f, te.p1, tokens.AudienceClient, time.Now().Add(time.Hour))),
		"tampered":         string(tampered),
		"unknown kid":      unknownKidTok,
	}
	stream := f.path(te.env, "/stream")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sse := func(tok string) *http.Response {
		r, _ := http.NewRequestWithContext(ctx, "GET", te.srv.URL+stream+"?token="+tok, nil)
		res, err := te.client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := sse(good.Token)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("good token: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	res.Body.Close()
	// A Bearer JWT works like ?token=.
	r, _ := http.NewRequestWithContext(ctx, "GET", te.srv.URL+stream, nil)
	r.Header.Set("Authorization", "Bearer "+good.Token)
	if res, err := te.client.Do(r); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("bearer token: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	for name, tok := range bad {
		res := sse(tok)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s over SSE: %d, want 401", name, res.StatusCode)
		}
	}
	if res := sse(otherRun.Token); res.StatusCode != http.StatusForbidden {
		t.Errorf("another run's token over SSE: %d, want 403", res.StatusCode)
	}

	wsURL := "ws" + strings.TrimPrefix(te.srv.URL, "http") + stream + "?token="
	dialClose := func(tok string) websocket.StatusCode {
		c, _, err := websocket.Dial(ctx, wsURL+tok, nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.CloseNow()
		_, _, err = c.Read(ctx)
		return websocket.CloseStatus(err)
	}
	for name, tok := range bad {
		if code := dialClose(tok); code != 4001 {
			t.Errorf("%s over WebSocket: close %d, want 4001", name, code)
		}
	}
	if code := dialClose(otherRun.Token); code != 4003 {
		t.Errorf("another run's token over WebSocket: close %d, want 4003", code)
	}
	c, _, err := websocket.Dial(ctx, wsURL+good.Token, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	_, b, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"seq":1`) {
		t.Fatalf("good token over WebSocket: %s %v", b, err)
	}
}

// TestMuxSubscribeWithToken: on /ws, a subscribe may carry a token for its
// run instead of the connection holding an API key; a bad or foreign token
// is -32003.
func TestMuxSubscribeWithToken(t *testing.T) {
	te := newTokenEnv(t)
	f, g := te.fixture(), te.fixture()
	good, _ := te.mint(t, f, te.readKey, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(te.srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	call := func(id int, run, tok string) map[string]any {
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": "subscribe",
			"params": map[string]any{"run_id": run, "token": tok}})
		if err := c.Write(ctx, websocket.MessageText, b); err != nil {
			t.Fatal(err)
		}
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			json.Unmarshal(b, &m)
			if m["id"] != nil {
				return m
			}
		}
	}
	if m := call(1, g.run, good.Token); m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32003) {
		t.Errorf("token of another run: %v", m)
	}
	if m := call(2, f.run, "nope"); m["error"] == nil || m["error"].(map[string]any)["code"] != float64(-32003) {
		t.Errorf("bad token: %v", m)
	}
	if m := call(3, f.run, ""); m["error"] == nil {
		t.Errorf("no token on an unauthenticated connection: %v", m)
	}
	if m := call(4, f.run, good.Token); m["result"] == nil {
		t.Errorf("good token: %v", m)
	}
}
