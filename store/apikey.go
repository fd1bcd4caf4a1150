package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// APIKeyPrefix starts every runhub key, so that secret scanners and people
// recognise one.
const APIKeyPrefix = "rh_"

// apiKeyBytes of randomness: 240 bits, above the contract's 160.
const apiKeyBytes = 30

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// GenerateAPIKey returns a new random key, a short prefix to show people, and
// the hash to store. The key itself is never stored.
func GenerateAPIKey() (secret, prefix string, hash []byte) {
	b := make([]byte, apiKeyBytes)
	rand.Read(b) // never returns an error (crypto/rand, Go 1.24+)
	secret = APIKeyPrefix + strings.ToLower(keyEncoding.EncodeToString(b))
	return secret, secret[:len(APIKeyPrefix)+6], HashAPIKey(secret)
}

// HashAPIKey is the stored form of a key. Keys carry 240 random bits, so a
// plain SHA-256 cannot be brute-forced and keeps the lookup an index probe.
func HashAPIKey(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}
