package rest

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"runhub/store"
)

// API key cache. Every API request names its key, and looking it up in the
// store was the largest single cost of a small request (11.5% of the CPU
// of append_log under load: one query per request). A node therefore keeps
// the keys it verified for a short while, by the hash of their secret.
//
// Revocation stays within the contract's 5 s (API.md "Limits and
// hardening", tokens.RevocationWindow) on every node, whatever process
// revoked the key: a cached key is dropped as soon as the node's revocation
// poller has seen it revoked (every ≤1 s, when the server has one), and in
// any case a cached entry is believed for at most KeyCacheTTL, after which
// the store is asked again (it returns only unrevoked keys).
const (
	// KeyCacheTTL is how long a verified key is believed without asking the
	// store: 2 s leaves 3 s of the 5 s revocation window for a slow store
	// query and the request itself, even on a node without a poller, while
	// a busy key costs one query per 2 s instead of one per request.
	KeyCacheTTL = 2 * time.Second
	// KeyCacheSize bounds the verified keys a node holds: a key is ~200
	// bytes, so 10,000 of them are ~2-3 MiB, far more keys than one
	// deployment uses at once; when full, an arbitrary entry (Go's map
	// order) makes room, which costs its key one store query.
	KeyCacheSize = 10_000
	// UnknownKeyTTL is how long a secret the store does not know is
	// refused without asking again, so that a client repeating a wrong key
	// (a misconfigured agent in a retry loop) costs the store one query per
	// second rather than one per request. It is short because the only
	// harm it can do is refuse a key created within that second after the
	// same secret was tried; it cannot extend a revoked key's life.
	UnknownKeyTTL = time.Second
	// UnknownKeyCacheSize bounds the unknown secrets remembered. It is a
	// separate, smaller table so that a flood of random secrets cannot push
	// verified keys out; random secrets never repeat, so caching more of
	// them would buy nothing.
	UnknownKeyCacheSize = 1_024
)

// keyHash is the SHA-256 of a key's secret (store.HashAPIKey).
type keyHash = [sha256.Size]byte

// hashKey is store.HashAPIKey without its allocations (TestHashKey keeps
// the two equal): a key (51 bytes) is copied into a buffer on the stack,
// where []byte(secret) would allocate; a longer secret allocates.
func hashKey(secret string) keyHash {
	var buf [128]byte
	return sha256.Sum256(append(buf[:0], secret...))
}

// keyCache remembers verified keys (and, briefly, unknown secrets).
// The *store.APIKey it hands out is shared between requests: callers only
// read it.
type keyCache struct {
	ttl     time.Duration
	size    int
	revoked func(keyID int64) bool // nil: no poller; only the TTL bounds a revoked key
	now     func() time.Time

	mu      sync.Mutex
	known   map[keyHash]cachedKey
	unknown map[keyHash]time.Time // expiry
}

type cachedKey struct {
	key     *store.APIKey
	expires time.Time
}

func newKeyCache(ttl time.Duration, size int, revoked func(int64) bool) *keyCache {
	return &keyCache{ttl: ttl, size: size, revoked: revoked, now: time.Now,
		known: make(map[keyHash]cachedKey), unknown: make(map[keyHash]time.Time)}
}

// keySource is the store as the cache reads it (an interface, not a
// method value, which would cost an allocation per request).
type keySource interface {
	APIKeyByHash(ctx context.Context, hash []byte) (*store.APIKey, error)
}

// lookup returns the unrevoked key with hash h, from the cache or from
// src (the store); store.ErrNotFound when there is none.
func (c *keyCache) lookup(ctx context.Context, h keyHash, src keySource) (*store.APIKey, error) {
	now := c.now()
	c.mu.Lock()
	if e, ok := c.known[h]; ok {
		if now.Before(e.expires) && (c.revoked == nil || !c.revoked(e.key.ID)) {
			c.mu.Unlock()
			return e.key, nil
		}
		delete(c.known, h)
	}
	if exp, ok := c.unknown[h]; ok {
		if now.Before(exp) {
			c.mu.Unlock()
			return nil, store.ErrNotFound
		}
		delete(c.unknown, h)
	}
	c.mu.Unlock()

	// A copy: handing h[:] out would move every lookup's h to the heap.
	key, err := src.APIKeyByHash(ctx, append([]byte(nil), h[:]...))
	if errors.Is(err, store.ErrNotFound) {
		c.mu.Lock()
		makeRoom(c.unknown, UnknownKeyCacheSize, now, func(exp time.Time) time.Time { return exp })
		c.unknown[h] = now.Add(UnknownKeyTTL)
		c.mu.Unlock()
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	// A key the poller already knows revoked is not cached (the store
	// answered before the revocation committed).
	if c.revoked != nil && c.revoked(key.ID) {
		return nil, store.ErrNotFound
	}
	c.mu.Lock()
	makeRoom(c.known, c.size, now, func(e cachedKey) time.Time { return e.expires })
	c.known[h] = cachedKey{key: key, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return key, nil
}

// len reports how many verified keys are cached (tests).
func (c *keyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.known)
}

// makeRoom leaves m with fewer than size entries: the expired ones go
// first; if that is not enough, arbitrary ones, down to 7/8 of size, so
// that the sweep is paid once per size/8 insertions rather than on every
// insertion into a full table.
func makeRoom[V any](m map[keyHash]V, size int, now time.Time, expiry func(V) time.Time) {
	if len(m) < size {
		return
	}
	for h, v := range m {
		if !now.Before(expiry(v)) {
			delete(m, h)
		}
	}
	if len(m) < size {
		return
	}
	for h := range m {
		if len(m) < size-size/8 {
			break
		}
		delete(m, h)
	}
}

// KnownProjectsSize bounds the project ids a node remembers as existing.
// Projects are created by the operator and never deleted, so an id seen
// once exists for good and needs no expiry; the bound only keeps a caller
// probing ids from growing the table (only ids that exist are added, so it
// is reached only by a deployment with that many projects, which then asks
// the store for the rest).
const KnownProjectsSize = 100_000

// knownProjects remembers the projects found to exist: an all-projects
// key's request checked its project in the store on every request (a
// fifth of append_log's server CPU with the bootstrap key).
type knownProjects struct {
	mu  sync.RWMutex
	ids map[int64]struct{}
}

// exists reports whether project exists, asking get (the store) only
// for an id not seen before; an unknown id is store.ErrNotFound.
func (k *knownProjects) exists(ctx context.Context, project int64, get func(context.Context, int64) (*store.Project, error)) error {
	k.mu.RLock()
	_, ok := k.ids[project]
	k.mu.RUnlock()
	if ok {
		return nil
	}
	if _, err := get(ctx, project); err != nil {
		return err
	}
	k.mu.Lock()
	if k.ids == nil {
		k.ids = make(map[int64]struct{})
	}
	if len(k.ids) < KnownProjectsSize {
		k.ids[project] = struct{}{}
	}
	k.mu.Unlock()
	return nil
}
