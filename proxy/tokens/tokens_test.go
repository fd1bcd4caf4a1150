package tokens

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func testClaims() Claims {
	return Claims{RunID: "r1", TaskID: "t1", TeamID: 7, UserID: 3, DistinctID: "api_key:x", Scope: "read"}
}

// TestGeneratedKeyIsKept: the first start writes the key with mode 0600;
// the next start signs with the same key (tokens stay valid).
func TestGeneratedKeyIsKept(t *testing.T) {
	dir := t.TempDir()
	a, err := Load(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	tok, _, err := a.Mint(testClaims(), AudienceClient)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if b.kid != a.kid {
		t.Fatalf("kid changed across restarts: %s, %s", a.kid, b.kid)
	}
	c, err := b.Verify(tok, AudienceClient)
	if err != nil || c.RunID != "r1" || c.TeamID != 7 || c.Scope != "read" || c.ID == "" || c.IssuedAt == nil {
		t.Fatalf("verify after restart: %+v, %v", c, err)
	}
	if len(a.kid) != 16 || strings.Trim(a.kid, "0123456789abcdef") != "" {
		t.Errorf("kid %q is not 16 hex digits", a.kid)
	}
}

func pemOf(t *testing.T, key *rsa.PrivateKey) (priv, pub string) {
	t.Helper()
	der := x509.MarshalPKCS1PrivateKey(key)
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
}

// TestRotation: a key given in the environment (with \n escapes, as
// environments carry it) signs; tokens of the previous key still verify
// while it is configured, and stop verifying once it is not.
func TestRotation(t *testing.T) {
	oldKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	newKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	oldPriv, oldPub := pemOf(t, oldKey)
	newPriv, _ := pemOf(t, newKey)
	old, err := Load(Config{PrivateKeyPEM: strings.ReplaceAll(oldPriv, "\n", `\n`)})
	if err != nil {
		t.Fatal(err)
	}
	oldTok, _, _ := old.Mint(testClaims(), AudienceClient)
	rotated, err := Load(Config{PrivateKeyPEM: newPriv, PreviousPublicKeyPEM: oldPub})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rotated.Verify(oldTok, AudienceClient); err != nil {
		t.Fatalf("previous key's token refused during the rotation: %v", err)
	}
	newTok, _, _ := rotated.Mint(testClaims(), AudienceClient)
	if _, err := rotated.Verify(newTok, AudienceClient); err != nil {
		t.Fatal(err)
	}
	done, _ := Load(Config{PrivateKeyPEM: newPriv})
	if _, err := done.Verify(oldTok, AudienceClient); !errors.Is(err, ErrBadToken) {
		t.Fatalf("old key's token after the rotation: %v", err)
	}
}

// TestVerifyRefuses: each way a token can be wrong is ErrBadToken.
func TestVerifyRefuses(t *testing.T) {
	now := time.Now()
	tk, err := Load(Config{DataDir: t.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	good, _, _ := tk.Mint(testClaims(), AudienceClient)
	agent, _, _ := tk.Mint(testClaims(), AudienceAgent)
	expiredTk := *tk
	expiredTk.now = func() time.Time { return now.Add(-25 * time.Hour) }
	expired, _, _ := expiredTk.Mint(testClaims(), AudienceClient)
	other, _ := Load(Config{DataDir: t.TempDir()})
	unknownKid, _, _ := other.Mint(testClaims(), AudienceClient)
	noScope := testClaims()
	noScope.Scope = ""
	badScope, _, _ := tk.Mint(noScope, AudienceClient)

	cases := map[string]string{
		"agent audience":   agent,
		"expired":          expired,
		"alg none":         algNoneToken(t, tk, testClaims()),
		"hs256 public key": hs256PublicKeyToken(t, tk, testClaims()),
		"tampered":         tampered(good),
		"unknown kid":      unknownKid,
		"garbage":          "a.b.c",
		"no scope":         badScope,
	}
	if _, err := tk.Verify(good, AudienceClient); err != nil {
		t.Fatalf("good token: %v", err)
	}
	for name, tok := range cases {
		if c, err := tk.Verify(tok, AudienceClient); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: verified (%+v, %v)", name, c, err)
		}
	}
	if _, err := tk.Verify(good, AudienceAgent); !errors.Is(err, ErrBadToken) {
		t.Errorf("client token on the agent audience: %v", err)
	}
}

// Forgeries the verifier must refuse.

// algNoneToken is an unsigned token ("alg": "none") with tk's kid.
func algNoneToken(t testing.TB, tk *Tokens, c Claims) string {
	c.RegisteredClaims = jwt.RegisteredClaims{Audience: jwt.ClaimStrings{AudienceClient},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, &c)
	tok.Header["kid"] = tk.kid
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hs256PublicKeyToken is signed with HMAC using the public key's PEM as
// the secret (the algorithm-confusion attack).
func hs256PublicKeyToken(t testing.TB, tk *Tokens, c Claims) string {
	c.RegisteredClaims = jwt.RegisteredClaims{Audience: jwt.ClaimStrings{AudienceClient},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	der, err := x509.MarshalPKIXPublicKey(&tk.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, &c)
	tok.Header["kid"] = tk.kid
	s, err := tok.SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tampered changes one character of the token's signature.
func tampered(tok string) string {
	b := []byte(tok)
	i := len(b) - 5
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}
