package hub

import (
	"context"
	"slices"
	"sync"
	"time"
)

// connContext is a /ws connection's context: it ends when the connection
// does (cancel), and carries the watch of the keys that authenticated it
// (AuthenticatedBy finds it). It is context.WithCancel's context but for
// what is derived from it: the context package registers a context derived
// from a parent of another type through the parent's AfterFunc, which here
// keeps a list that is freed when the last derived context ends. A
// cancelCtx keeps its table of children once it has had one, about 250
// bytes for the life of an idle connection whose subscribe read the store
// once.
type connContext struct {
	rv *revocation // set before the connection's first request

	mu    sync.Mutex
	done  chan struct{} // made when first asked for
	err   error
	after []*afterFunc
}

// afterFunc is one AfterFunc registration (its own allocation, so that its
// stop function finds it whatever was removed before).
type afterFunc struct{ f func() }

var _ interface {
	context.Context
	AfterFunc(func()) func() bool
} = (*connContext)(nil)

func (c *connContext) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *connContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *connContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *connContext) Value(key any) any {
	if _, ok := key.(revocationKey); ok && c.rv != nil {
		return c.rv
	}
	return nil
}

// cancel ends the context (context.Canceled) and runs the AfterFunc
// callbacks, each in a goroutine of its own, as context.AfterFunc does.
func (c *connContext) cancel() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = context.Canceled
	if c.done != nil {
		close(c.done)
	}
	after := c.after
	c.after = nil
	c.mu.Unlock()
	for _, a := range after {
		go a.f()
	}
}

// AfterFunc has f called, in a goroutine of its own, when the context
// ends (at once if it has); stop prevents that, and reports whether it did.
func (c *connContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	a := &afterFunc{f: f}
	c.after = append(c.after, a)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.after, a)
		if i < 0 {
			return false
		}
		c.after = slices.Delete(c.after, i, i+1)
		if len(c.after) == 0 {
			c.after = nil // the list's memory goes with the last one
		}
		return true
	}
}

func (c *connContext) String() string { return "hub.connContext" }
