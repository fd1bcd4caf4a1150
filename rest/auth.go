package rest

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"runhub/hub"
	"runhub/proxy/tokens"
	"runhub/store"
)

// RateLimit is a per-key token-bucket limit with two windows, as PostHog
// applies to personal API keys (burst 480/min, sustained 4800/h).
type RateLimit struct {
	PerMinute int // 0: no per-minute bucket
	PerHour   int // 0: no per-hour bucket
}

// DefaultRateLimit is the contract's default when rate limiting is on.
var DefaultRateLimit = RateLimit{PerMinute: 480, PerHour: 4800}

// limiter holds one pair of buckets per key id.
type limiter struct {
	cfg  RateLimit
	mu   sync.Mutex
	keys map[int64][]*rate.Limiter
}

func newLimiter(cfg RateLimit) *limiter {
	return &limiter{cfg: cfg, keys: map[int64][]*rate.Limiter{}}
}

// allow takes one token from every bucket of the key, or returns how many
// seconds to wait. Tokens are only taken when all buckets have one.
func (l *limiter) allow(key int64, now time.Time) (ok bool, retryAfter int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	bs, found := l.keys[key]
	if !found {
		if l.cfg.PerMinute > 0 {
			bs = append(bs, rate.NewLimiter(rate.Limit(float64(l.cfg.PerMinute)/60), l.cfg.PerMinute))
		}
		if l.cfg.PerHour > 0 {
			bs = append(bs, rate.NewLimiter(rate.Limit(float64(l.cfg.PerHour)/3600), l.cfg.PerHour))
		}
		l.keys[key] = bs
	}
	var wait time.Duration
	for _, b := range bs {
		if b.TokensAt(now) < 1 {
			need := (1 - b.TokensAt(now)) / float64(b.Limit())
			wait = max(wait, time.Duration(need*float64(time.Second)))
		}
	}
	if wait > 0 {
		return false, int(math.Ceil(wait.Seconds()))
	}
	for _, b := range bs {
		b.AllowN(now, 1)
	}
	return true, 0
}

type ctxKey int

const (
	keyCtx ctxKey = iota
	projectCtx
)

// projectOf returns the project id of a request that passed auth.
func projectOf(r *http.Request) int64 { return r.Context().Value(projectCtx).(int64) }

// bearer extracts the token of an "Authorization: Bearer" header.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// authenticate resolves the API key of r: 401 when missing or unknown.
// The key may come from the node's key cache (keyCache).
func (s *Server) authenticate(r *http.Request) (*store.APIKey, error) {
	return s.authenticateFrom(r, s.keys)
}

// authenticateFrom is authenticate through src: the key cache, or the
// store itself.
func (s *Server) authenticateFrom(r *http.Request, src *keyCache) (*store.APIKey, error) {
	secret := bearer(r)
	if secret == "" {
		return nil, errUnauthenticated
	}
	var key *store.APIKey
	var err error
	if src != nil {
		key, err = src.lookup(r.Context(), hashKey(secret), s.store)
	} else {
		key, err = s.store.APIKeyByHash(r.Context(), store.HashAPIKey(secret))
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, errBadKey
	}
	if err != nil {
		return nil, err
	}
	return key, nil
}

// handlerFunc is a handler that returns its error for writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// project wraps h with the checks of a project-scoped endpoint, in the
// order the contract gives them: key (401), rate limit (429), scope (403),
// project membership (403), project existence (404).
func (s *Server) project(scope string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.authorize(w, r, scope, h); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *Server) authorize(w http.ResponseWriter, r *http.Request, scope string, h handlerFunc) error {
	key, err := s.authenticate(r)
	if err != nil {
		return err
	}
	if s.limiter != nil {
		if ok, after := s.limiter.allow(key.ID, time.Now()); !ok {
			return throttled(after)
		}
	}
	if !key.HasScope(scope) {
		return missingScope(scope)
	}
	project, err := pathProject(r)
	if err != nil {
		return err
	}
	if !key.CanReach(project) {
		return errNoProject
	}
	if key.AllProjects {
		if err := s.projects.exists(r.Context(), project, s.store.GetProject); err != nil {
			return err
		}
	}
	ctx := context.WithValue(r.Context(), keyCtx, key)
	ctx = context.WithValue(ctx, projectCtx, project)
	return h(w, r.WithContext(ctx))
}

// serveWS authenticates a /ws connection and hands it to the hub with an
// authorizer for its subscriptions. A connection may carry an API key
// (task:read: the runs of the key's projects), a connection token (?token=
// or a Bearer JWT: that token's run), or nothing, in which case each
// subscribe must carry a token for its run. The connection is closed
// (4001) when the API key behind any of these is revoked.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	var key *store.APIKey
	var claims *tokens.Claims
	if tok := connectionToken(r); tok != "" {
		c, err := s.tokens.Verify(tok, tokens.AudienceClient)
		if err != nil {
			s.refuseToken(w, r, errBadToken)
			return
		}
		claims = c
		r = r.WithContext(hub.WithKey(r.Context(), c.KeyID)) // closed when the key is revoked
	} else if bearer(r) != "" {
		// From the store, not the key cache: a connection is opened once
		// and lives on the store, so while the store is down it is
		// refused with 503 (the client retries) rather than opened to
		// fail every subscribe.
		k, err := s.authenticateFrom(r, nil)
		if err == nil && !k.HasScope(store.ScopeRead) {
			err = missingScope(store.ScopeRead)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// The connection keeps what its subscribes check (for its life),
		// not the whole key.
		key = &store.APIKey{Scopes: k.Scopes, AllProjects: k.AllProjects, Projects: k.Projects}
		r = r.WithContext(hub.WithKey(r.Context(), k.ID))
	}
	if key != nil || claims != nil {
		// Without credentials, the hub gives the connection a few seconds
		// to subscribe with a token.
		r = r.WithContext(hub.WithAuthenticated(r.Context()))
	}
	s.ws(w, r, func(ctx context.Context, runID, token string) (*store.Run, bool, error) {
		switch {
		case token != "":
			c, err := s.tokens.Verify(token, tokens.AudienceClient)
			if err != nil {
				return nil, false, store.ErrForbidden
			}
			run, err := s.runForToken(ctx, c, runID)
			if err == nil {
				hub.AuthenticatedBy(ctx, c.KeyID) // the connection dies with the key
			}
			return run, err == nil && c.CanWrite(), err
		case claims != nil:
			run, err := s.runForToken(ctx, claims, runID)
			return run, err == nil && claims.CanWrite(), err
		case key != nil:
			run, err := s.store.RunByID(ctx, runID)
			if err != nil {
				return nil, false, err
			}
			if !key.CanReach(run.ProjectID) {
				// Another project's run is indistinguishable from a missing one.
				return nil, false, store.ErrNotFound
			}
			return run, key.HasScope(store.ScopeWrite), nil
		}
		return nil, false, store.ErrForbidden
	})
}
