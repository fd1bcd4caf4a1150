package runs

import (
	"context"
	"sync"
	"time"
)

// publishCtx is the context of one publish: the request's values, none
// of its cancellation, and a deadline PublishTimeout away, as
// context.WithTimeout(context.WithoutCancel(ctx), PublishTimeout) would
// make it, but with its timer started only when a publisher asks for Done.
// The node's in-memory broker never does (it does not block), and a timer
// set and stopped on every append costs as much as signing the answer's
// log_url did (it takes the timer heap's lock twice); a broker that waits
// on the network (Redis) asks, and gets the same bound.
type publishCtx struct {
	context.Context // context.WithoutCancel of the request's: values only
	deadline        time.Time

	mu    sync.Mutex
	done  chan struct{} // made by the first Done
	timer *time.Timer   // closes done at the deadline; started with it
	err   error         // context.Canceled once stopped, or DeadlineExceeded
}

// newPublishCtx is the context of a publish for a request's ctx.
func newPublishCtx(ctx context.Context, timeout time.Duration) *publishCtx {
	return &publishCtx{Context: context.WithoutCancel(ctx), deadline: time.Now().Add(timeout)}
}

func (c *publishCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *publishCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.expireLocked() // before done exists: it closes nothing
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		} else {
			c.timer = time.AfterFunc(time.Until(c.deadline), c.expire)
		}
	}
	return c.done
}

func (c *publishCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	return c.err
}

// expire ends the context at its deadline (the timer's function).
func (c *publishCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = context.DeadlineExceeded
		close(c.done)
	}
}

// expireLocked sets err once the deadline passed, whether or not a timer
// runs, so that Err is right without one.
func (c *publishCtx) expireLocked() {
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.err = context.DeadlineExceeded
		if c.done != nil {
			close(c.done)
		}
	}
}

// stop cancels the context (the publish returned), as a
// context.CancelFunc would: anything the publisher left waiting on it
// stops.
func (c *publishCtx) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.expireLocked()
	if c.err == nil {
		c.err = context.Canceled
		if c.done != nil {
			close(c.done)
		}
	}
}
