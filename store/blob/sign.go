package blob

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// SecretFile keeps the signing secret in the data directory.
const SecretFile = "url-secret"

// ErrBadLink: a signed link that was changed, or has expired.
var ErrBadLink = errors.New("invalid or expired link")

// Signer signs and checks runhub download links: HMAC-SHA256 over the
// method, the path, the sorted query (its other parameters) and the
// expiry.
type Signer struct {
	secret []byte
	now    func() time.Time
}

// LoadSigner reads the secret from dataDir, creating it (0600) on first use.
// now is the clock (nil: time.Now).
func LoadSigner(dataDir string, now func() time.Time) (*Signer, error) {
	if now == nil {
		now = time.Now
	}
	p := filepath.Join(dataDir, SecretFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		if b, err = GenerateSecret(); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return LoadSigner(dataDir, now)
		}
		if err != nil {
			return nil, fmt.Errorf("url secret: %w", err)
		}
		_, werr := f.Write(b)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("url secret: %w", werr)
		}
	} else if err != nil {
		return nil, fmt.Errorf("url secret: %w", err)
	}
	s, err := NewSigner(b, now)
	if err != nil {
		return nil, fmt.Errorf("url secret %s: %w", p, err)
	}
	return s, nil
}

// SecretName is the name under which a store that keeps secrets
// (store.Secrets) holds the link-signing secret.
const SecretName = "url-secret"

// secretBytes is the length of a generated link-signing secret: 256 bits,
// HMAC-SHA256's own strength.
const secretBytes = 32

// GenerateSecret makes a new link-signing secret.
func GenerateSecret() ([]byte, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// NewSigner signs and verifies links with secret (at least 32 bytes); now
// is the clock (nil: time.Now).
func NewSigner(secret []byte, now func() time.Time) (*Signer, error) {
	if len(secret) < secretBytes {
		return nil, fmt.Errorf("link secret is too short (%d bytes, want %d)", len(secret), secretBytes)
	}
	if now == nil {
		now = time.Now
	}
	return &Signer{secret: secret, now: now}, nil
}

func (s *Signer) mac(method, path string, q url.Values) []byte {
	m := hmac.New(sha256.New, s.secret)
	fmt.Fprintf(m, "%s\n%s\n%s", method, path, q.Encode())
	return m.Sum(nil)
}

// Sign returns the query (params, exp and sig) of a link to path valid for
// ttl.
func (s *Signer) Sign(method, path string, params url.Values, ttl time.Duration) url.Values {
	q := url.Values{}
	for k, v := range params {
		q[k] = append([]string(nil), v...)
	}
	q.Set("exp", strconv.FormatInt(s.now().Add(ttl).Unix(), 10))
	q.Set("sig", base64.RawURLEncoding.EncodeToString(s.mac(method, path, q)))
	return q
}

// Verify checks a signed link's query.
func (s *Signer) Verify(method, path string, q url.Values) error {
	sig, err := base64.RawURLEncoding.DecodeString(q.Get("sig"))
	if err != nil || len(q["sig"]) != 1 {
		return ErrBadLink
	}
	rest := url.Values{}
	for k, v := range q {
		if k != "sig" {
			rest[k] = v
		}
	}
	if !hmac.Equal(sig, s.mac(method, path, rest)) {
		return ErrBadLink
	}
	exp, err := strconv.ParseInt(q.Get("exp"), 10, 64)
	if err != nil || len(q["exp"]) != 1 || s.now().Unix() >= exp {
		return ErrBadLink
	}
	return nil
}

// Now is the signer's clock: a link signed now expires at Now()+ttl, to
// the second, which lets a caller reuse a link signed within the same
// second (rest's log_url cache) without changing when it expires.
func (s *Signer) Now() time.Time { return s.now() }
