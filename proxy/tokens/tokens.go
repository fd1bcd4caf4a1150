// Package tokens mints and verifies the connection tokens of runhub (the
// browser's, and a sandbox agent's), serves their JWKS, and keeps the
// node's view of revoked API keys, whose tokens it refuses.
//
// Connection tokens are RS256 JWTs for one run. Guarantees: a token
// verifies only with the algorithm pinned to RS256, the expected audience
// (and issuer, when one is configured), an expiry in the future and a kid
// this node knows (the current key, or the previous one during a
// rotation), and not minted by an API key that was revoked (claim key_id,
// see Revocations); the caller then checks the run.
//
// The client token's audience and issuer are settings (Config), so that an
// agent-server built for PostHog, which verifies client tokens with the
// public key alone (RS256, aud "posthog:sandbox_connection", no issuer,
// and claims run_id, task_id, team_id, user_id, distinct_id, exp of JSON
// types it checks), accepts runhub's: callers name the client audience by
// AudienceClient, and Tokens puts the configured one on the wire. aud is
// written as a single string, as PostHog mints it (its agent-server
// refuses an array).
// The signing key comes from RUNHUB_JWT_PRIVATE_KEY or is generated on
// first start and kept in the data directory with mode 0600.
package tokens

import (
	"cmp"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// Audiences of the two kinds of connection token. AudienceClient is also
// the default of Config.ClientAudience: a token minted or verified "for
// AudienceClient" carries the configured audience.
const (
	AudienceClient = "runhub:sandbox_connection"
	AudienceAgent  = "runhub:agent"
)

// PostHogClientAudience is the audience PostHog's agent-server accepts on
// a client connection token (the value of Config.ClientAudience that lets
// such an agent-server accept runhub's tokens).
const PostHogClientAudience = "posthog:sandbox_connection"

// reservedAudiences are the audiences of runhub's other tokens: a client
// audience equal to one of them would let a browser's read token pass for
// an agent's.
var reservedAudiences = []string{AudienceAgent, AudienceIngest}

// CheckClientAudience reports whether aud may be the client tokens'
// audience: not empty, and not the audience of another kind of token.
func CheckClientAudience(aud string) error {
	if strings.TrimSpace(aud) == "" {
		return errors.New("token audience must not be empty")
	}
	for _, r := range reservedAudiences {
		if aud == r {
			return fmt.Errorf("token audience %q is the audience of another kind of token", aud)
		}
	}
	return nil
}

// TTL is how long a connection token is valid.
const TTL = 24 * time.Hour

// KeyFile holds the generated signing key in the data directory.
const KeyFile = "jwt-key.pem"

// ErrBadToken: the token is malformed, expired, for another audience, not
// signed by a known key, or uses another algorithm.
var ErrBadToken = errors.New("invalid connection token")

// Claims are a connection token's claims.
type Claims struct {
	RunID      string `json:"run_id"`
	TaskID     string `json:"task_id"`
	TeamID     int64  `json:"team_id"`
	UserID     int64  `json:"user_id"`
	DistinctID string `json:"distinct_id"`
	Scope      string `json:"scope"` // "read" or "write"
	// KeyID is the API key that minted the token: the token dies with it
	// (Revocations). 0 (absent): minted by runhub itself, or before tokens
	// named their key; such a token lives until it expires.
	KeyID int64 `json:"key_id,omitempty"`
	jwt.RegisteredClaims
}

// CanWrite reports whether the token grants write access (commands).
func (c *Claims) CanWrite() bool { return c.Scope == "write" }

// Tokens mints and verifies connection tokens.
type Tokens struct {
	key  *rsa.PrivateKey
	kid  string
	pubs map[string]*rsa.PublicKey // kid -> key: the current one and the previous one
	now  func() time.Time

	revocations *Revocations // nil: no key is revoked

	clientAud string // the audience AudienceClient stands for
	issuer    string // "": tokens carry no iss, and none is checked
}

// Revocations is the poller Config.Revocations named (nil: no key is
// revoked); an agent connection watches its token's key through it.
func (t *Tokens) Revocations() *Revocations { return t.revocations }

// Config configures Load.
type Config struct {
	// PrivateKeyPEM, if set, is the signing key (PKCS#1 or PKCS#8).
	PrivateKeyPEM string
	// DataDir keeps a generated key when PrivateKeyPEM is empty.
	DataDir string
	// PreviousPublicKeyPEM, if set, is a key tokens may still be signed
	// with (a rotation): it is published in the JWKS and accepted.
	PreviousPublicKeyPEM string
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
	// Revocations makes Verify refuse the tokens of revoked keys, and agent
	// connections close when their key is revoked. nil: no key is ever
	// revoked, for tokens minted without a store of keys (tests of the
	// tokens alone); a node always sets it.
	Revocations *Revocations
	// ClientAudience is the aud of client connection tokens ("":
	// AudienceClient); PostHogClientAudience for a PostHog agent-server.
	ClientAudience string
	// Issuer, if set, is the iss of every token minted, and Verify
	// requires it. "": no iss claim (as PostHog mints its tokens), and a
	// token's iss is not checked.
	Issuer string
}

// Load loads or creates the signing key.
func Load(cfg Config) (*Tokens, error) {
	var key *rsa.PrivateKey
	var err error
	switch {
	case cfg.PrivateKeyPEM != "":
		// Environments often carry PEM with literal \n escapes.
		key, err = jwt.ParseRSAPrivateKeyFromPEM([]byte(strings.ReplaceAll(cfg.PrivateKeyPEM, `\n`, "\n")))
		if err != nil {
			return nil, fmt.Errorf("jwt private key: %w", err)
		}
	default:
		if key, err = loadOrCreateKey(filepath.Join(cfg.DataDir, KeyFile)); err != nil {
			return nil, err
		}
	}
	t := &Tokens{key: key, pubs: map[string]*rsa.PublicKey{}, now: cfg.Now, revocations: cfg.Revocations,
		clientAud: cmp.Or(cfg.ClientAudience, AudienceClient), issuer: cfg.Issuer}
	if err := CheckClientAudience(t.clientAud); err != nil {
		return nil, err
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.kid, err = KeyID(&key.PublicKey); err != nil {
		return nil, err
	}
	t.pubs[t.kid] = &key.PublicKey
	if cfg.PreviousPublicKeyPEM != "" {
		prev, err := jwt.ParseRSAPublicKeyFromPEM([]byte(strings.ReplaceAll(cfg.PreviousPublicKeyPEM, `\n`, "\n")))
		if err != nil {
			return nil, fmt.Errorf("previous jwt public key: %w", err)
		}
		kid, err := KeyID(prev)
		if err != nil {
			return nil, err
		}
		t.pubs[kid] = prev
	}
	return t, nil
}

// SecretName is the name under which a store that keeps secrets
// (store.Secrets) holds the signing key, as PEM.
const SecretName = "jwt-private-key"

// GenerateKeyPEM makes a new RSA-2048 signing key, PKCS #8 in PEM.
func GenerateKeyPEM() ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generate jwt key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func loadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	if b, err := os.ReadFile(path); err == nil {
		key, err := jwt.ParseRSAPrivateKeyFromPEM(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read jwt key: %w", err)
	}
	b, err := GenerateKeyPEM()
	if err != nil {
		return nil, err
	}
	key, err := jwt.ParseRSAPrivateKeyFromPEM(b)
	if err != nil {
		return nil, err
	}
	// O_EXCL: two processes starting at once must not each write a key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return loadOrCreateKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("write jwt key: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("write jwt key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write jwt key: %w", err)
	}
	return key, nil
}

// KeyID is the first 16 hex digits of the SHA-256 of the public key's
// PKIX DER encoding.
func KeyID(pub *rsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])[:16], nil
}

// ClientAudience is the audience client tokens carry on the wire.
func (t *Tokens) ClientAudience() string { return t.clientAud }

// wire maps an audience as callers name it to the one on the wire.
func (t *Tokens) wire(audience string) string {
	if audience == AudienceClient {
		return t.clientAud
	}
	return audience
}

// signedClaims is what Mint signs: the claims with aud as one string,
// not golang-jwt's one-element array, because PostHog's agent-server
// requires a string there (its schema: aud string, optional).
type signedClaims struct {
	*Claims
	Audience string `json:"aud"`
}

// Mint signs a token for claims (run, task, team, user, distinct_id,
// scope) with the given audience (AudienceClient: the configured client
// audience); it sets iat, exp, jti, aud and, when configured, iss.
func (t *Tokens) Mint(c Claims, audience string) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(TTL).Truncate(time.Second)
	c.RegisteredClaims = jwt.RegisteredClaims{
		Issuer:    t.issuer,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
		ID:        uuid.NewString(),
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, signedClaims{&c, t.wire(audience)})
	tok.Header["kid"] = t.kid
	s, err := tok.SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Verify checks a token for the audience (AudienceClient: the configured
// client audience) and the configured issuer, and returns its claims;
// every failure is ErrBadToken (wrapping the reason). A token minted by a
// key this node knows to be revoked fails too.
func (t *Tokens) Verify(token, audience string) (*Claims, error) {
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}),
		jwt.WithAudience(t.wire(audience)), jwt.WithExpirationRequired(), jwt.WithTimeFunc(t.now)}
	if t.issuer != "" {
		opts = append(opts, jwt.WithIssuer(t.issuer))
	}
	p := jwt.NewParser(opts...)
	var c Claims
	_, err := p.ParseWithClaims(token, &c, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		pub, ok := t.pubs[kid]
		if !ok {
			return nil, fmt.Errorf("unknown kid %q", kid)
		}
		return pub, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadToken, err)
	}
	if c.RunID == "" || (c.Scope != "read" && c.Scope != "write") {
		return nil, fmt.Errorf("%w: missing run_id or scope", ErrBadToken)
	}
	if t.revocations.Revoked(c.KeyID) {
		return nil, fmt.Errorf("%w: api key %d was revoked", ErrBadToken, c.KeyID)
	}
	return &c, nil
}

// ServeJWKS serves GET /.well-known/jwks.json: the public keys tokens may
// be signed with.
func (t *Tokens) ServeJWKS(w http.ResponseWriter, _ *http.Request) {
	type jwk struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		N   string `json:"n"`
		E   string `json:"e"`
	}
	keys := []jwk{}
	add := func(kid string, pub *rsa.PublicKey) {
		keys = append(keys, jwk{Kty: "RSA", Use: "sig", Alg: "RS256", Kid: kid,
			N: base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
			E: base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())})
	}
	add(t.kid, &t.key.PublicKey) // the current key first
	for kid, pub := range t.pubs {
		if kid != t.kid {
			add(kid, pub)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	json.NewEncoder(w).Encode(map[string]any{"keys": keys})
}
