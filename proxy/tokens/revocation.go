package tokens

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"runhub/store"
)

// Revocation timing. `keys revoke` is another process writing the store, so
// a node learns of a revocation only by polling; the contract promises that
// within RevocationWindow of the revocation every connection opened with the
// key or its tokens is closed and its tokens are refused.
const (
	// DefaultRevocationPoll is how often each node asks the store whether a
	// key was revoked: the contract allows at most 2 s; 1 s leaves most of
	// the window for a slow query and the close handshake, and the query
	// (two aggregates over the small api_keys table) costs nothing.
	DefaultRevocationPoll = time.Second
	// RevocationWindow is the contract's promise (5 s). A poll whose queries
	// take longer than the window minus the poll interval is abandoned and
	// retried at the next tick, so that one stuck query cannot hold every
	// later revocation back.
	RevocationWindow = 5 * time.Second
)

// RevocationSource is the store as the revocation poller reads it.
type RevocationSource interface {
	RevocationMark(ctx context.Context) (store.RevocationMark, error)
	RevokedAPIKeyIDs(ctx context.Context) ([]int64, error)
}

// RevocationConfig configures Revocations.
type RevocationConfig struct {
	Store  RevocationSource
	Logger *slog.Logger
	// Interval is the poll period (0: DefaultRevocationPoll).
	Interval time.Duration
	// Window is the promise the poll is bounded by (0: RevocationWindow);
	// tests shrink both.
	Window time.Duration
}

// Revocations is one node's view of the revoked API keys. It polls the
// store, refuses the tokens of revoked keys (Tokens.Verify consults it) and
// tells the connections opened with a revoked key or its tokens to close.
//
// Guarantees: once a poll has seen a key revoked, Revoked reports it and
// every onRevoke registered for it has been called, once; a Watch that
// starts after that calls onRevoke at once. A nil *Revocations revokes
// nothing (a node without a store to poll).
type Revocations struct {
	src      RevocationSource
	log      *slog.Logger
	interval time.Duration
	window   time.Duration

	mu       sync.Mutex
	revoked  map[int64]struct{}
	watches  map[int64]map[*watch]struct{}
	mark     store.RevocationMark
	loaded   bool
	failing  bool // the last poll failed (logged once, not every tick)
	cancel   context.CancelFunc
	finished chan struct{}
}

// NewRevocations builds the poller; Start loads the revoked keys and polls.
func NewRevocations(cfg RevocationConfig) *Revocations {
	r := &Revocations{src: cfg.Store, log: cfg.Logger, interval: cfg.Interval, window: cfg.Window,
		revoked: map[int64]struct{}{}, watches: map[int64]map[*watch]struct{}{}}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.interval <= 0 {
		r.interval = DefaultRevocationPoll
	}
	if r.window <= 0 {
		r.window = RevocationWindow
	}
	return r
}

// Start loads the keys revoked so far (tokens of a key revoked while the
// node was down are refused from the first request), then polls every
// interval until Close. A failure of the first load is returned: a node that
// cannot tell revoked keys must not serve their tokens.
func (r *Revocations) Start(ctx context.Context) error {
	if err := r.poll(ctx); err != nil {
		return fmt.Errorf("load revoked api keys: %w", err)
	}
	ctx, r.cancel = context.WithCancel(ctx)
	r.finished = make(chan struct{})
	go r.run(ctx)
	return nil
}

// Close stops polling and waits until the poller has returned.
func (r *Revocations) Close() {
	if r == nil || r.cancel == nil {
		return
	}
	r.cancel()
	<-r.finished
}

func (r *Revocations) run(ctx context.Context) {
	defer close(r.finished)
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		was := r.failing
		r.failing = err != nil
		r.mu.Unlock()
		switch {
		case err != nil && !was:
			r.log.Warn("revocation poll failed; revoked keys are not enforced until it succeeds", "err", err)
		case err == nil && was:
			r.log.Info("revocation poll recovered")
		}
	}
}

// poll reads the mark and, when it changed, the revoked ids; it then
// notifies the watches of every newly revoked key. The mark is read before
// the ids: a revocation between the two reads is in the ids already, and
// the next poll sees the mark change and reads them again (harmlessly).
func (r *Revocations) poll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(r.window-r.interval, r.interval))
	defer cancel()
	mark, err := r.src.RevocationMark(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	same := r.loaded && mark.Same(r.mark)
	r.mu.Unlock()
	if same {
		return nil
	}
	ids, err := r.src.RevokedAPIKeyIDs(ctx)
	if err != nil {
		return err
	}
	var fresh []int64
	var fire []*watch
	r.mu.Lock()
	for _, id := range ids {
		if _, ok := r.revoked[id]; ok {
			continue
		}
		r.revoked[id] = struct{}{}
		fresh = append(fresh, id)
		for w := range r.watches[id] {
			fire = append(fire, w)
		}
		delete(r.watches, id)
	}
	first := !r.loaded
	r.mark, r.loaded = mark, true
	r.mu.Unlock()
	for _, w := range fire {
		w.fire()
	}
	if len(fresh) > 0 && !first {
		r.log.Info("api keys revoked: closing their connections", "key_ids", fresh, "connections", len(fire))
	}
	return nil
}

// Revoked reports whether the key keyID is known to be revoked; 0 (a token
// minted before tokens named their key) never is.
func (r *Revocations) Revoked(keyID int64) bool {
	if r == nil || keyID == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.revoked[keyID]
	return ok
}

// Watch calls onRevoke once when keyID is revoked, at once if it already
// is. onRevoke must not block: it runs on the poller's goroutine (or the
// caller's), and only signals the connection, which closes itself. After
// stop returns, onRevoke is not running and will not run. keyID 0 is never
// revoked. It implements hub.Guard.
func (r *Revocations) Watch(keyID int64, onRevoke func()) (stop func()) {
	if r == nil || keyID == 0 {
		return func() {}
	}
	w := &watch{fn: onRevoke}
	r.mu.Lock()
	_, gone := r.revoked[keyID]
	if !gone {
		if r.watches[keyID] == nil {
			r.watches[keyID] = map[*watch]struct{}{}
		}
		r.watches[keyID][w] = struct{}{}
	}
	r.mu.Unlock()
	if gone {
		w.fire()
	}
	return func() {
		r.mu.Lock()
		if ws := r.watches[keyID]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(r.watches, keyID)
			}
		}
		r.mu.Unlock()
		w.stop()
	}
}

// watching reports how many watches wait on keys not yet revoked (tests:
// connections unregister when they end).
func (r *Revocations) watching() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ws := range r.watches {
		n += len(ws)
	}
	return n
}

// watch is one registered onRevoke; its mutex makes stop wait for a call
// in progress.
type watch struct {
	mu   sync.Mutex
	fn   func()
	done bool // fired or stopped
}

func (w *watch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.done = true
		w.fn()
	}
}

func (w *watch) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
