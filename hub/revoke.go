package hub

import (
	"context"
	"slices"
	"sync"

	"github.com/coder/websocket"
)

// closeRevoked closes a WebSocket whose API key was revoked: the code of a
// refused token (4001), so that a client handles both alike (authenticate
// again rather than retry).
const closeRevoked websocket.StatusCode = 4001

// Guard tells a connection that an API key that authenticated it, itself or
// through a token it minted, was revoked (tokens.Revocations).
type Guard interface {
	// Watch calls onRevoke once when keyID is revoked (at once if it
	// already is); onRevoke must not block. After stop returns, onRevoke
	// is not running and will not run. keyID 0 is never revoked.
	Watch(keyID int64, onRevoke func()) (stop func())
}

type keysKey struct{}

// WithKey returns ctx noting that the API key keyID authenticated the
// request, itself or through a token it minted: the stream or /ws connection
// the hub serves for the request is closed when the key is revoked (SSE: the
// response ends; WebSocket: close 4001). keyID 0 notes nothing.
func WithKey(ctx context.Context, keyID int64) context.Context {
	if keyID == 0 {
		return ctx
	}
	prev, _ := ctx.Value(keysKey{}).([]int64)
	return context.WithValue(ctx, keysKey{}, append(prev[:len(prev):len(prev)], keyID))
}

type revocationKey struct{}

// AuthenticatedBy notes, from inside a RunAuthorizer of GET /ws, that the
// API key keyID minted a token the connection used (a subscribe's token):
// the whole connection closes (4001) when that key is revoked, like one
// opened with the key. Dropping only the subscriptions the token opened
// would leave a connection whose later requests carry the revoked trust
// in no visible way; closing is simpler for the client too (it reconnects
// with what it still holds). keyID 0, or a ctx not of /ws, notes nothing.
func AuthenticatedBy(ctx context.Context, keyID int64) {
	if rv, ok := ctx.Value(revocationKey{}).(*revocation); ok {
		rv.add(keyID)
	}
}

// revocation watches the keys that authenticated one connection and calls
// onRevoke (once; it must not block) when any of them is revoked.
type revocation struct {
	guard    Guard
	onRevoke func()

	mu      sync.Mutex
	keys    []int64 // a connection has one or two: a slice, not a map
	stops   []func()
	stopped bool
	once    sync.Once
}

// watchKeys starts watching the keys noted on ctx (WithKey).
func (h *Hub) watchKeys(ctx context.Context, onRevoke func()) *revocation {
	rv := &revocation{guard: h.guard, onRevoke: onRevoke}
	keys, _ := ctx.Value(keysKey{}).([]int64)
	for _, k := range keys {
		rv.add(k)
	}
	return rv
}

func (rv *revocation) add(keyID int64) {
	if rv.guard == nil || keyID == 0 {
		return
	}
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if rv.stopped || slices.Contains(rv.keys, keyID) {
		return
	}
	rv.keys = append(rv.keys, keyID)
	// Under rv.mu: a stop that runs meanwhile waits, and then unregisters
	// this watch too. Watch may call the callback at once; it only signals.
	rv.stops = append(rv.stops, rv.guard.Watch(keyID, func() { rv.once.Do(rv.onRevoke) }))
}

// stop unregisters every watch; afterwards onRevoke is not running and will
// not run.
func (rv *revocation) stop() {
	rv.mu.Lock()
	stops := rv.stops
	rv.stops, rv.stopped = nil, true
	rv.mu.Unlock()
	for _, s := range stops {
		s()
	}
}
