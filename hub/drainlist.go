package hub

import "sync"

// drainList is what the hub calls on its open WebSockets (/ws and
// .../stream) when it drains, in place of a context.AfterFunc on the hub's
// context per connection: that costs an idle connection about 180 bytes
// (the AfterFunc's context and its entry in the hub context's table of
// children); an entry here is two pointers and the callback.
type drainList struct {
	mu      sync.Mutex
	drained bool
	head    *drainEntry
}

// drainEntry is one connection's place in the list; a /ws session embeds
// it, so joining allocates nothing.
type drainEntry struct {
	prev, next *drainEntry
	in         bool
	f          func()
}

// add has f called, in a goroutine of its own, when the hub drains; at
// once if it has. remove undoes it.
func (l *drainList) add(e *drainEntry, f func()) {
	l.mu.Lock()
	if l.drained {
		l.mu.Unlock()
		go f()
		return
	}
	e.f, e.in = f, true
	e.prev, e.next = nil, l.head
	if l.head != nil {
		l.head.prev = e
	}
	l.head = e
	l.mu.Unlock()
}

// remove takes e off the list; its callback may have started already (as
// with the stop function of context.AfterFunc, it is not waited for).
func (l *drainList) remove(e *drainEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !e.in {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.prev, e.next, e.in = nil, nil, false
}

// drain calls every callback, each in a goroutine of its own (one may
// wait out a close handshake), and has later adds call theirs at once.
func (l *drainList) drain() {
	l.mu.Lock()
	l.drained = true
	e := l.head
	l.head = nil
	for e != nil {
		next := e.next
		e.prev, e.next, e.in = nil, nil, false
		go e.f()
		e = next
	}
	l.mu.Unlock()
}
