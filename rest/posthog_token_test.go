package rest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"runhub/proxy/tokens"
)

// jwksPEM fetches the node's JWKS and returns its current key as the PEM
// an operator gives PostHog's agent-server (which takes one public key,
// not a JWKS URL).
func jwksPEM(t *testing.T, e *env) string {
	t.Helper()
	res := e.do(req{Method: "GET", Path: "/.well-known/jwks.json"})
	wantStatus(t, res, http.StatusOK)
	var jwks struct {
		Keys []struct{ N, E string }
	}
	if err := json.Unmarshal(res.body, &jwks); err != nil || len(jwks.Keys) == 0 {
		t.Fatalf("jwks %s: %v", res.body, err)
	}
	n, _ := base64.RawURLEncoding.DecodeString(jwks.Keys[0].N)
	x, _ := base64.RawURLEncoding.DecodeString(jwks.Keys[0].E)
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(x).Int64())})
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// verifyAsPostHogAgentServer checks a client connection token the way
// PostHog's agent-server does (its validateJwt): the signature with its one
// configured public key whatever the kid, the algorithm pinned to RS256,
// aud "posthog:sandbox_connection", an unexpired exp; then its payload
// schema, which checks JSON types: run_id, task_id and distinct_id
// strings, team_id, user_id and exp numbers, iat a number if present, aud
// a string if present (an array fails), mode "interactive" or
// "background" if present. No issuer is checked.
func verifyAsPostHogAgentServer(token, publicKeyPEM string) error {
	pub, err := jwt.ParseRSAPublicKeyFromPEM([]byte(publicKeyPEM))
	if err != nil {
		return err
	}
	_, err = jwt.Parse(token, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(tokens.PostHogClientAudience), jwt.WithExpirationRequired())
	if err != nil {
		return fmt.Errorf("jwt.verify: %w", err)
	}
	parts := strings.Split(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return err
	}
	var payload map[string]json.RawMessage
	if err := json.Unmarshal(raw, &payload); err != nil {
		return err
	}
	isString := func(v json.RawMessage) bool { return bytes.HasPrefix(v, []byte(`"`)) }
	isNumber := func(v json.RawMessage) bool {
		var f float64
		return len(v) > 0 && v[0] != '"' && json.Unmarshal(v, &f) == nil
	}
	required := map[string]func(json.RawMessage) bool{"run_id": isString, "task_id": isString, "distinct_id": isString,
		"team_id": isNumber, "user_id": isNumber, "exp": isNumber}
	optional := map[string]func(json.RawMessage) bool{"iat": isNumber, "aud": isString,
		"mode": func(v json.RawMessage) bool { return string(v) == `"interactive"` || string(v) == `"background"` }}
	for name, ok := range required {
		if v, present := payload[name]; !present || !ok(v) {
			return fmt.Errorf("schema: %s is %s", name, v)
		}
	}
	for name, ok := range optional {
		if v, present := payload[name]; present && !ok(v) {
			return fmt.Errorf("schema: %s is %s", name, v)
		}
	}
	return nil
}

// TestTokensAcceptedByPostHogAgentServer: with the client audience set to
// PostHog's, the tokens of connection_token and stream_token pass PostHog's
// agent-server checks with the public key taken from the JWKS, and still
// open the run's stream on runhub; a token minted with runhub's default
// audience does not pass them. Before: aud was a one-element array, which
// the agent-server's schema refuses, and the audience could not be set.
func TestTokensAcceptedByPostHogAgentServer(t *testing.T) {
	te := newTokenEnvWith(t, tokens.Config{ClientAudience: tokens.PostHogClientAudience})
	f := te.fixture()
	pubPEM := jwksPEM(t, te.env)

	conn, res := te.mint(t, f, te.writeKey, "")
	wantStatus(t, res, http.StatusOK)
	if err := verifyAsPostHogAgentServer(conn.Token, pubPEM); err != nil {
		t.Errorf("connection_token: %v", err)
	}
	res = te.do(req{Method: "GET", Path: f.path(te.env, "/stream_token/"), Key: te.readKey})
	wantStatus(t, res, http.StatusOK)
	var st streamTokenBody
	if err := json.Unmarshal(res.body, &st); err != nil {
		t.Fatal(err)
	}
	if err := verifyAsPostHogAgentServer(st.Token, pubPEM); err != nil {
		t.Errorf("stream_token: %v", err)
	}
	// The configured audience is the one runhub itself checks.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tok := range []string{conn.Token, st.Token} {
		r, _ := http.NewRequestWithContext(ctx, "GET", st.StreamBaseURL+f.path(te.env, "/stream/")+"?token="+tok, nil)
		sres, err := te.client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		sres.Body.Close()
		if sres.StatusCode != http.StatusOK {
			t.Errorf("stream with the token: %d", sres.StatusCode)
		}
	}
	if _, err := te.tokens.Verify(conn.Token, tokens.AudienceClient); err != nil {
		t.Errorf("Verify for the client audience: %v", err)
	}

	// runhub's own audience (the default) is not PostHog's.
	def := newTokenEnv(t)
	g := def.fixture()
	tok, res := def.mint(t, g, def.writeKey, "")
	wantStatus(t, res, http.StatusOK)
	if err := verifyAsPostHogAgentServer(tok.Token, jwksPEM(t, def.env)); !errors.Is(err, jwt.ErrTokenInvalidAudience) {
		t.Errorf("default audience: %v, want an audience error", err)
	}
}

// TestStreamTokenEndpoint: stream_token answers {token, stream_base_url}:
// a token with scope read for the run (also for a task:write key), and the
// base URL under which the run's stream is served; scopes, projects and
// unknown runs as every read endpoint.
func TestStreamTokenEndpoint(t *testing.T) {
	te := newTokenEnv(t)
	f := te.fixture()
	for _, key := range []string{te.readKey, te.writeKey} {
		res := te.do(req{Method: "GET", Path: f.path(te.env, "/stream_token/"), Key: key})
		wantStatus(t, res, http.StatusOK)
		var st streamTokenBody
		if err := json.Unmarshal(res.body, &st); err != nil {
			t.Fatal(err)
		}
		c, err := te.tokens.Verify(st.Token, tokens.AudienceClient)
		if err != nil {
			t.Fatal(err)
		}
		if c.RunID != f.run || c.TaskID != f.task || c.TeamID != te.p1 || c.Scope != "read" || c.KeyID == 0 {
			t.Errorf("claims %+v", c)
		}
		if st.StreamBaseURL != te.srv.URL {
			t.Errorf("stream_base_url %q, want %q", st.StreamBaseURL, te.srv.URL)
		}
	}
	wantStatus(t, te.do(req{Method: "GET", Path: f.path(te.env, "/stream_token/")}), http.StatusUnauthorized)
	wantStatus(t, te.do(req{Method: "GET", Path: f.path(te.env, "/stream_token/"), Key: te.otherKey}), http.StatusForbidden)
	unknown := fixture{task: f.task, run: "00000000-0000-4000-8000-000000000000"}
	wantStatus(t, te.do(req{Method: "GET", Path: unknown.path(te.env, "/stream_token/"), Key: te.readKey}), http.StatusNotFound)
	wantStatus(t, te.do(req{Method: "POST", Path: f.path(te.env, "/stream_token/"), Key: te.writeKey}), http.StatusMethodNotAllowed)
}
