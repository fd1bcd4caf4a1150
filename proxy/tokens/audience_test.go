package tokens

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// payload decodes a token's claims as JSON values, untyped.
func payload(t *testing.T, tok string) map[string]json.RawMessage {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClientAudienceSetting: a configured client audience is the one client
// tokens carry, as one JSON string, and the one Verify requires for
// AudienceClient; agent tokens keep theirs. Tokens of runhub's default
// audience, or of another node's setting, are refused.
func TestClientAudienceSetting(t *testing.T) {
	dir := t.TempDir()
	ph, err := Load(Config{DataDir: dir, ClientAudience: PostHogClientAudience})
	if err != nil {
		t.Fatal(err)
	}
	def, err := Load(Config{DataDir: dir}) // the same key, runhub's audience
	if err != nil {
		t.Fatal(err)
	}
	if ph.ClientAudience() != PostHogClientAudience || def.ClientAudience() != AudienceClient {
		t.Fatalf("audiences %q, %q", ph.ClientAudience(), def.ClientAudience())
	}
	client, _, _ := ph.Mint(testClaims(), AudienceClient)
	agent, _, _ := ph.Mint(testClaims(), AudienceAgent)
	if got := string(payload(t, client)["aud"]); got != `"posthog:sandbox_connection"` {
		t.Errorf("client aud %s, want one string", got)
	}
	if got := string(payload(t, agent)["aud"]); got != `"runhub:agent"` {
		t.Errorf("agent aud %s", got)
	}
	if _, ok := payload(t, client)["iss"]; ok {
		t.Error("iss without an issuer configured")
	}
	if _, err := ph.Verify(client, AudienceClient); err != nil {
		t.Errorf("client token: %v", err)
	}
	if _, err := ph.Verify(agent, AudienceAgent); err != nil {
		t.Errorf("agent token: %v", err)
	}
	if _, err := ph.Verify(agent, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Errorf("agent token as a client's: %v", err)
	}
	if _, err := def.Verify(client, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Errorf("PostHog-audience token on a default node: %v", err)
	}
	other, _, _ := def.Mint(testClaims(), AudienceClient)
	if _, err := ph.Verify(other, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Errorf("default-audience token on a PostHog-audience node: %v", err)
	}
}

// TestClientAudienceRefused: the client audience may not be empty nor the
// audience of another kind of token (a browser's read token would pass for
// an agent's).
func TestClientAudienceRefused(t *testing.T) {
	for _, aud := range []string{" ", AudienceAgent, AudienceIngest} {
		if err := CheckClientAudience(aud); err == nil {
			t.Errorf("CheckClientAudience(%q) passed", aud)
		}
		if _, err := Load(Config{DataDir: t.TempDir(), ClientAudience: aud}); err == nil {
			t.Errorf("Load with client audience %q succeeded", aud)
		}
	}
	if err := CheckClientAudience(PostHogClientAudience); err != nil {
		t.Error(err)
	}
}

// TestIssuerSetting: with an issuer, every token carries it and Verify
// requires it; tokens without one, or with another, are refused. Without
// an issuer no iss is written and none is checked.
func TestIssuerSetting(t *testing.T) {
	dir := t.TempDir()
	a, err := Load(Config{DataDir: dir, Issuer: "https://runhub.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Load(Config{DataDir: dir, Issuer: "https://other.example.com"})
	none, _ := Load(Config{DataDir: dir})
	tok, _, _ := a.Mint(testClaims(), AudienceClient)
	if got := string(payload(t, tok)["iss"]); got != `"https://runhub.example.com"` {
		t.Errorf("iss %s", got)
	}
	if _, err := a.Verify(tok, AudienceClient); err != nil {
		t.Errorf("own issuer: %v", err)
	}
	if _, err := b.Verify(tok, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Errorf("another issuer: %v", err)
	}
	plain, _, _ := none.Mint(testClaims(), AudienceClient)
	if _, err := a.Verify(plain, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Errorf("no iss on a node that requires one: %v", err)
	}
	if _, err := none.Verify(tok, AudienceClient); err != nil {
		t.Errorf("a node without an issuer checks none: %v", err)
	}
}
