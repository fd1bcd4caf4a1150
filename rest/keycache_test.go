package rest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"runhub/proxy/tokens"
	"runhub/store"
)

// countingStore counts the API key and project lookups that reach the
// store.
type countingStore struct {
	store.Store
	lookups  atomic.Int64
	projects atomic.Int64
	keysDown atomic.Bool // APIKeyByHash fails as a store that is down
}

func (c *countingStore) GetProject(ctx context.Context, id int64) (*store.Project, error) {
	c.projects.Add(1)
	return c.Store.GetProject(ctx, id)
}

func (c *countingStore) APIKeyByHash(ctx context.Context, hash []byte) (*store.APIKey, error) {
	c.lookups.Add(1)
	if c.keysDown.Load() {
		return nil, store.ErrUnavailable
	}
	return c.Store.APIKeyByHash(ctx, hash)
}

// TestKeyCacheSparesTheStore (issue 14 item 4): requests with one key ask
// the store for it once per KeyCacheTTL, not once per request, and a
// repeated unknown key once per UnknownKeyTTL.
func TestKeyCacheSparesTheStore(t *testing.T) {
	var cs *countingStore
	e := newEnv(t, func(c *Config) {
		cs = &countingStore{Store: c.Store}
		c.Store = cs
	})
	unknown, _, _ := store.GenerateAPIKey()
	start := time.Now()
	before := cs.lookups.Load()
	const n = 50
	for range n {
		wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.writeKey}), http.StatusOK)
		wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: unknown}), http.StatusUnauthorized)
	}
	got := cs.lookups.Load() - before
	// One lookup of each key, plus one more per TTL that passed.
	elapsed := time.Since(start)
	limit := 2 + int64(elapsed/KeyCacheTTL) + int64(elapsed/UnknownKeyTTL)
	if got > limit {
		t.Errorf("%d requests made %d key lookups in %v, want at most %d", 2*n, got, elapsed, limit)
	}
}

// TestWSAuthenticatesFromTheStore: a /ws connection is authenticated by
// the store, not the key cache, so that while the store is down it is
// refused with 503 (the client retries) instead of opened to fail every
// subscribe; REST requests with the cached key still pass authentication.
func TestWSAuthenticatesFromTheStore(t *testing.T) {
	var cs *countingStore
	e := newEnv(t, func(c *Config) {
		cs = &countingStore{Store: c.Store}
		c.Store = cs
		c.WS = func(w http.ResponseWriter, r *http.Request, _ RunAuthorizer) { w.WriteHeader(http.StatusOK) }
	})
	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.writeKey}), http.StatusOK)
	cs.keysDown.Store(true)
	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.writeKey}), http.StatusOK)
	res := rawDo(t, e, req{Method: "GET", Path: "/ws", Key: e.writeKey})
	if res.status != http.StatusServiceUnavailable {
		t.Fatalf("/ws with the store down: %v, want 503", res)
	}
	checkErrorShape(t, "/ws with the store down", res)
	cs.keysDown.Store(false)
	wantStatus(t, e.do(req{Method: "GET", Path: "/ws", Key: e.writeKey}), http.StatusOK)
}

// TestKnownProjects (issue 14 item 4): an all-projects key's requests
// check their project in the store once (projects are never deleted), and
// a project that does not exist stays 404 (and is asked for every time).
func TestKnownProjects(t *testing.T) {
	var cs *countingStore
	e := newEnv(t, func(c *Config) {
		cs = &countingStore{Store: c.Store}
		c.Store = cs
	})
	before := cs.projects.Load()
	for range 20 {
		wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1), Key: e.allKey}), http.StatusOK)
	}
	if n := cs.projects.Load() - before; n != 1 {
		t.Errorf("20 requests asked the store for their project %d times, want 1", n)
	}
	missing := e.p2 + 1000
	before = cs.projects.Load()
	for range 3 {
		wantAPIError(t, e.do(req{Method: "GET", Path: e.tasksPath(missing), Key: e.allKey}), http.StatusNotFound, "invalid_request", "")
	}
	if n := cs.projects.Load() - before; n != 3 {
		t.Errorf("3 requests for a missing project asked the store %d times, want 3", n)
	}
}

// TestKeyCacheRevocationWithinWindow (issue 14 item 4): a key in use on
// two nodes (each with its own cache, one store) and then revoked in the
// store (as `keys revoke`, another process, does) gets 401 on both within
// the contract's 5 s: node A has no revocation poller (only the TTL bounds
// its cache), node B has one (it drops the key when the poll sees it).
func TestKeyCacheRevocationWithinWindow(t *testing.T) {
	e := newEnv(t, nil)
	rv := tokens.NewRevocations(tokens.RevocationConfig{Store: e.st, Interval: 100 * time.Millisecond})
	if err := rv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rv.Close)
	tk, err := tokens.Load(tokens.Config{DataDir: t.TempDir(), Revocations: rv})
	if err != nil {
		t.Fatal(err)
	}
	cb := Config{Store: e.st, Runs: quietRuns(t, e.st), Tokens: tk}
	withDeps(t, &cb)
	b := httptest.NewServer(New(cb))
	t.Cleanup(b.Close)

	secret, id := e.newKey([]string{store.ScopeAll}, false, e.p1)
	// B first: its poller refuses the key well within the TTL.
	nodes := []struct{ name, base string }{{"B (poller)", b.URL}, {"A (TTL only)", e.srv.URL}}
	for _, n := range nodes {
		name, base := n.name, n.base
		// Twice: the second answer comes from the cache.
		for range 2 {
			if res := doWith(t, e.client, base, req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret}); res.status != http.StatusOK {
				t.Fatalf("%s: %v", name, res)
			}
		}
	}
	revoked := time.Now()
	if err := e.st.RevokeAPIKey(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		name, base := n.name, n.base
		for {
			res := doWith(t, e.client, base, req{Method: "GET", Path: e.tasksPath(e.p1), Key: secret})
			if res.status == http.StatusUnauthorized {
				t.Logf("%s: 401 %v after the revocation", name, time.Since(revoked).Round(time.Millisecond))
				if base == b.URL && time.Since(revoked) >= KeyCacheTTL {
					t.Errorf("%s: the poller's revocation did not reach the key cache", name)
				}
				break
			}
			if res.status != http.StatusOK {
				t.Fatalf("%s: %v", name, res)
			}
			if time.Since(revoked) > tokens.RevocationWindow {
				t.Fatalf("%s: the revoked key still works %v after its revocation", name, time.Since(revoked))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// fakeKeys is a store of keys for the cache alone.
type fakeKeys struct {
	keys    map[keyHash]*store.APIKey
	lookups int
}

func (f *fakeKeys) APIKeyByHash(_ context.Context, h []byte) (*store.APIKey, error) {
	f.lookups++
	if k, ok := f.keys[keyHash(h)]; ok {
		return k, nil
	}
	return nil, store.ErrNotFound
}

func hashOf(i int) keyHash { return keyHash([]byte(fmt.Sprintf("%032d", i))) }

// TestKeyCacheExpiry: a cached key is believed for the TTL and then asked
// for again, so a key gone from the store (revoked) is refused; a key the
// poller reports revoked is refused at once.
func TestKeyCacheExpiry(t *testing.T) {
	ctx := context.Background()
	f := &fakeKeys{keys: map[keyHash]*store.APIKey{hashOf(1): {ID: 1}, hashOf(2): {ID: 2}}}
	var revoked atomic.Int64
	c := newKeyCache(KeyCacheTTL, KeyCacheSize, func(id int64) bool { return id == revoked.Load() })
	now := time.Unix(1_000_000, 0)
	c.now = func() time.Time { return now }
	for range 3 {
		if k, err := c.lookup(ctx, hashOf(1), f); err != nil || k.ID != 1 {
			t.Fatalf("lookup: %v %v", k, err)
		}
	}
	if f.lookups != 1 {
		t.Fatalf("%d store lookups for 3 requests within the TTL, want 1", f.lookups)
	}
	delete(f.keys, hashOf(1)) // revoked in the store, by another node
	now = now.Add(KeyCacheTTL - time.Millisecond)
	if _, err := c.lookup(ctx, hashOf(1), f); err != nil {
		t.Fatalf("within the TTL: %v", err)
	}
	now = now.Add(time.Millisecond)
	if _, err := c.lookup(ctx, hashOf(1), f); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after the TTL: %v, want ErrNotFound", err)
	}

	// The poller saw key 2 revoked: refused at once, within its TTL.
	if _, err := c.lookup(ctx, hashOf(2), f); err != nil {
		t.Fatal(err)
	}
	revoked.Store(2)
	if _, err := c.lookup(ctx, hashOf(2), f); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoked by the poller: %v, want ErrNotFound", err)
	}

	// An unknown key is asked for once per UnknownKeyTTL.
	f.lookups = 0
	for range 3 {
		if _, err := c.lookup(ctx, hashOf(3), f); !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
	}
	now = now.Add(UnknownKeyTTL)
	if _, err := c.lookup(ctx, hashOf(3), f); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if f.lookups != 2 {
		t.Errorf("%d store lookups of an unknown key, want 2 (one per UnknownKeyTTL)", f.lookups)
	}
	if KeyCacheTTL+tokens.DefaultRevocationPoll >= tokens.RevocationWindow || KeyCacheTTL >= tokens.RevocationWindow/2 {
		t.Errorf("KeyCacheTTL %v leaves too little of the %v revocation window", KeyCacheTTL, tokens.RevocationWindow)
	}
}

// TestKeyCacheBound: the cache never holds more than its size, and a flood
// of unknown secrets does not push verified keys out.
func TestKeyCacheBound(t *testing.T) {
	ctx := context.Background()
	const size = 64
	f := &fakeKeys{keys: map[keyHash]*store.APIKey{}}
	for i := range 3 * size {
		f.keys[hashOf(i)] = &store.APIKey{ID: int64(i + 1)}
	}
	c := newKeyCache(KeyCacheTTL, size, nil)
	for i := range 3 * size {
		if _, err := c.lookup(ctx, hashOf(i), f); err != nil {
			t.Fatal(err)
		}
		if n := c.len(); n > size {
			t.Fatalf("%d keys cached, bound %d", n, size)
		}
	}
	if n := c.len(); n < size/2 {
		t.Errorf("only %d keys cached after %d distinct ones (bound %d)", n, 3*size, size)
	}
	before := c.len()
	for i := range 3 * UnknownKeyCacheSize {
		c.lookup(ctx, hashOf(1_000_000+i), f)
		if len(c.unknown) > UnknownKeyCacheSize {
			t.Fatalf("%d unknown keys remembered, bound %d", len(c.unknown), UnknownKeyCacheSize)
		}
	}
	if c.len() != before {
		t.Errorf("unknown secrets changed the verified keys: %d, was %d", c.len(), before)
	}
}

// TestAuthenticateAllocs: authenticating a request with a cached key
// costs no allocation and no store query; a
// regression to a lookup per request shows here as dozens.
func TestAuthenticateAllocs(t *testing.T) {
	e := newEnv(t, nil)
	s := e.srv.Config.Handler.(*Server)
	r := httptest.NewRequest("GET", e.tasksPath(e.p1), nil)
	r.Header.Set("Authorization", "Bearer "+e.writeKey)
	if _, err := s.authenticate(r); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := s.authenticate(r); err != nil {
			t.Fatal(err)
		}
	}); n > 0 {
		t.Errorf("%v allocations per authentication with a cached key, want 0", n)
	}
}

// TestHashKey: the cache's hash is the one the store keeps.
func TestHashKey(t *testing.T) {
	secret, _, hash := store.GenerateAPIKey()
	if h := hashKey(secret); string(h[:]) != string(hash) || string(hash) != string(store.HashAPIKey(secret)) {
		t.Fatal("hashKey differs from store.HashAPIKey")
	}
	long := strings.Repeat("k", 300) // beyond hashKey's stack buffer
	if h := hashKey(long); string(h[:]) != string(store.HashAPIKey(long)) {
		t.Fatal("hashKey of a long secret differs from store.HashAPIKey")
	}
}
