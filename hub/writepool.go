package hub

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// writePool is the hub's shared WebSocket writers: a few goroutines (one
// per P) that write the queued frames of idle connections, so that an
// event fanned out to thousands of connections starts no goroutine per
// connection. They never block on a client: a connection's frames are
// written as far as its socket takes them at once (wsWriter.tryWrite), and
// a connection whose socket is full, whose queue overflowed, that has a
// catch-up to read from the store or that must wait out its WriteInterval
// is handed to its own writer (conn.start), which may block and sleep, and
// gives the connection back when its queue is empty. A connection that
// must wait out its WriteInterval (events arriving faster than that) waits
// in its shared writer's list of later writes, which one timer per writer
// serves, rather than in a sleeping goroutine of its own.
type writePool struct {
	h      *Hub
	once   sync.Once
	shards []*writeShard
	next   atomic.Uint32
}

// writeShard is one shared writer's list of connections to write.
type writeShard struct {
	mu     sync.Mutex
	ready  []*conn
	closed bool // its writer ended (the hub closed): connections go to their own
	wake   chan struct{}
	// later holds connections waiting out their WriteInterval, in the
	// order they were added (so roughly by due time); the shard's writer
	// alone uses it.
	later []delayed
	head  int // later[head:] are waiting
	// scheduled counts the connections given to this writer (under mu,
	// which schedule holds anyway): tests see by it which deliveries woke
	// a shared writer.
	scheduled uint64
}

// delayed is a connection whose next write is due at due.
type delayed struct {
	c   *conn
	due time.Time
}

// start starts the writers, owned by the hub (Close ends and waits for
// them); none once the hub is closed.
func (p *writePool) start() {
	for range runtime.GOMAXPROCS(0) {
		if !p.h.hold() {
			break
		}
		sh := &writeShard{wake: make(chan struct{}, 1)}
		p.shards = append(p.shards, sh)
		go p.run(sh)
	}
}

// schedule has a shared writer write c, which the caller marked busy.
func (p *writePool) schedule(c *conn) {
	p.once.Do(p.start)
	if len(p.shards) == 0 {
		c.start()
		return
	}
	sh := p.shards[p.next.Add(1)%uint32(len(p.shards))]
	sh.mu.Lock()
	if sh.closed {
		sh.mu.Unlock()
		c.start()
		return
	}
	sh.ready = append(sh.ready, c)
	sh.scheduled++
	first := len(sh.ready) == 1
	sh.mu.Unlock()
	if first {
		select {
		case sh.wake <- struct{}{}:
		default:
		}
	}
}

func (p *writePool) run(sh *writeShard) {
	defer p.h.work.Done()
	var batch []*conn
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var due <-chan time.Time
		if sh.head < len(sh.later) {
			timer.Reset(time.Until(sh.later[sh.head].due))
			due = timer.C
		}
		select {
		case <-p.h.ctx.Done():
			sh.mu.Lock()
			sh.closed = true
			rest := sh.ready
			sh.ready = nil
			sh.mu.Unlock()
			for _, c := range rest {
				c.start()
			}
			for _, d := range sh.later[sh.head:] {
				d.c.start()
			}
			return
		case <-sh.wake:
		case <-due:
		}
		timer.Stop()
		now := time.Now()
		for sh.head < len(sh.later) && !sh.later[sh.head].due.After(now) {
			c := sh.later[sh.head].c
			sh.later[sh.head] = delayed{}
			sh.head++
			p.write(sh, c)
		}
		if sh.head == len(sh.later) {
			sh.later, sh.head = sh.later[:0], 0
		} else if sh.head > 64 && sh.head*2 > len(sh.later) {
			// Never empty under a steady load: keep the list from growing.
			n := copy(sh.later, sh.later[sh.head:])
			clear(sh.later[n:])
			sh.later, sh.head = sh.later[:n], 0
		}
		for {
			sh.mu.Lock()
			batch, sh.ready = sh.ready, batch[:0]
			sh.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, c := range batch {
				p.write(sh, c)
				batch[i] = nil
			}
		}
	}
}

// writeNow is write in the caller's goroutine, for a publisher that
// claimed c (a small fan-out, see inlineFanOut): the frames go out without
// waking a shared writer, and a connection that must wait out its
// WriteInterval goes to the shared writers, which keep the list of later
// writes.
func (p *writePool) writeNow(c *conn) {
	p.write(nil, c)
}

// write writes c's queued frames without blocking, or hands c to its own
// writer (see writePool). A connection given more frames meanwhile goes to
// the back of a list, so that one busy connection does not hold up the
// others. sh is the shared writer calling, nil for writeNow.
func (p *writePool) write(sh *writeShard, c *conn) {
	c.mu.Lock()
	if c.slow || c.end || len(c.catchups) > 0 {
		c.mu.Unlock()
		c.start()
		return
	}
	if c.interval > 0 && time.Since(c.lastWrite) < c.interval {
		c.mu.Unlock()
		if sh == nil {
			p.schedule(c)
			return
		}
		sh.later = append(sh.later, delayed{c: c, due: c.lastWrite.Add(c.interval)})
		return
	}
	frames := c.frames
	c.frames, c.bytes = nil, 0
	if len(frames) == 0 {
		c.busy = false
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	sent, blocked, err := c.tryWrite(frames)
	if c.interval > 0 {
		c.lastWrite = time.Now()
	}
	if sent < len(frames) && err == nil {
		// Not written (another goroutine was writing): back to the
		// front of the queue, for the connection's own writer.
		c.mu.Lock()
		for _, f := range frames[sent:] {
			c.bytes += len(f)
		}
		c.frames = append(frames[sent:len(frames):len(frames)], c.frames...)
		c.mu.Unlock()
	}
	if blocked || err != nil {
		// Its own writer writes what the socket did not take (or meets
		// the error), then goes on with the queue.
		c.start()
		return
	}
	c.mu.Lock()
	if cap(frames) <= spareFrames && c.spare == nil {
		clear(frames) // the frames themselves are not kept
		c.spare = frames[:0]
	}
	if len(c.frames) == 0 && len(c.catchups) == 0 && !c.slow {
		c.busy = false
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	p.schedule(c)
}
