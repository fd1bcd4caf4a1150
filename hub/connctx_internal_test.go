package hub

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestConnContext: the /ws connection's context behaves as
// context.WithCancel's for what is derived from it (the context package
// registers children through its AfterFunc), and keeps nothing of a child
// once the child has ended.
func TestConnContext(t *testing.T) {
	c := new(connContext)
	if c.Err() != nil {
		t.Fatal("a new context has ended")
	}
	child, stop := context.WithTimeout(c, time.Hour)
	grandchild, stopGrand := context.WithCancel(child)
	defer stopGrand()
	c.mu.Lock()
	n := len(c.after)
	c.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d registrations for one derived context, want 1", n)
	}
	stop()
	<-grandchild.Done()
	c.mu.Lock()
	after := c.after
	c.mu.Unlock()
	if after != nil {
		t.Fatalf("after its only child ended, the context keeps %v", after)
	}

	// Cancelling ends the derived contexts, and Done, Err and AfterFunc
	// answer as context.WithCancel's do, before and after.
	child, stop = context.WithCancel(c)
	defer stop()
	done := c.Done()
	ran := make(chan struct{})
	c.AfterFunc(func() { close(ran) })
	dropped := c.AfterFunc(func() { t.Error("a stopped AfterFunc ran") })
	if !dropped() || dropped() {
		t.Fatal("stop: want true once, then false")
	}
	c.cancel()
	c.cancel() // twice is harmless
	for _, ch := range []<-chan struct{}{done, c.Done(), child.Done(), ran} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("not ended by cancel")
		}
	}
	if !errors.Is(c.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
		t.Fatalf("Err = %v, child's %v; want context.Canceled", c.Err(), child.Err())
	}
	late := make(chan struct{})
	if c.AfterFunc(func() { close(late) })() {
		t.Fatal("stop after the end reported it prevented the call")
	}
	<-late
	if _, ok := c.Deadline(); ok {
		t.Fatal("a deadline")
	}
}

// TestConnContextValue: AuthenticatedBy finds the connection's revocation
// watch through the context, and through what is derived from it.
func TestConnContextValue(t *testing.T) {
	c := new(connContext)
	if c.Value(revocationKey{}) != nil {
		t.Fatal("a revocation watch before one was set")
	}
	rv := &revocation{}
	c.rv = rv
	child, stop := context.WithCancel(c)
	defer stop()
	if got, _ := child.Value(revocationKey{}).(*revocation); got != rv {
		t.Fatalf("Value = %v, want the connection's watch", got)
	}
	if c.Value(keysKey{}) != nil {
		t.Fatal("a value for another key")
	}
}

// TestDrainList: every callback added and not removed runs at drain; one
// added after the drain runs at once.
func TestDrainList(t *testing.T) {
	var l drainList
	var e [3]drainEntry
	got := make(chan int, 4)
	for i := range e {
		l.add(&e[i], func() { got <- i })
	}
	l.remove(&e[1])
	l.remove(&e[1]) // twice is harmless
	l.drain()
	var late drainEntry
	l.add(&late, func() { got <- 3 })
	l.remove(&late)
	seen := map[int]bool{}
	for range 3 {
		select {
		case i := <-got:
			seen[i] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("callbacks run: %v", seen)
		}
	}
	if !seen[0] || !seen[2] || !seen[3] || seen[1] {
		t.Fatalf("callbacks run: %v, want 0, 2 and 3", seen)
	}
	select {
	case i := <-got:
		t.Fatalf("callback %d ran too", i)
	case <-time.After(50 * time.Millisecond):
	}
}
