package redis_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"runhub/hub/redis"
	"runhub/hub/redis/redistest"
	"runhub/store"
)

// blackholeProxy relays TCP connections to Redis until cut: then every
// connection it carries goes silent for good (bytes either way are
// swallowed, nothing is closed), as when a network partition drops packets
// or a firewall on the way forgets the flows; connections opened after the
// heal are relayed again.
type blackholeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	gen    int // the heal count: a connection relays while it is current
	cut    bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) url() string { return "redis://" + p.ln.Addr().String() + "/0" }

// live reports whether a connection of generation gen may relay.
func (p *blackholeProxy) live(gen int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.cut && p.gen == gen
}

func (p *blackholeProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if !cut {
		p.gen++ // the flows of before the cut stay dead
	}
}

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		gen := p.gen
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 && p.live(gen) {
					if _, err := dst.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					if p.live(gen) { // a dead flow stays silent
						dst.Close()
					}
					return
				}
			}
		}
		p.wg.Add(2)
		go pipe(out, in)
		go pipe(in, out)
	}
}

// recorder is a broker's event handler that remembers what it got.
type recorder struct {
	mu       sync.Mutex
	seqs     []int64
	resyncs  int
	notified chan struct{}
}

func (r *recorder) Deliver(runID string, events []store.Event) {
	r.mu.Lock()
	for _, ev := range events {
		r.seqs = append(r.seqs, ev.Seq)
	}
	r.mu.Unlock()
	select {
	case r.notified <- struct{}{}:
	default:
	}
}

func (r *recorder) Resync(runID string) {
	r.mu.Lock()
	r.resyncs++
	r.mu.Unlock()
	select {
	case r.notified <- struct{}{}:
	default:
	}
}

// wait waits (up to within) until cond holds on the recorder.
func (r *recorder) wait(within time.Duration, cond func(seqs []int64, resyncs int) bool) bool {
	deadline := time.After(within)
	for {
		r.mu.Lock()
		ok := cond(r.seqs, r.resyncs)
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-r.notified:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			return false
		}
	}
}

// TestSilentConnectionIsReplaced: when the path to Redis goes silent
// (packets dropped, nothing closed), the broker notices within seconds
// (it is not ready meanwhile) and, once the network is back, replaces the
// dead pub/sub connection: it subscribes again, resyncs the run, and
// events published after the heal arrive live. Before, the receive loop
// waited on the dead connection for good: the node looked ready (a fresh
// connection answered its PING) but heard no event again.
func TestSilentConnectionIsReplaced(t *testing.T) {
	rs := redistest.Start(t)
	proxy := newBlackholeProxy(t, strings.TrimSuffix(strings.TrimPrefix(rs.URL(), "redis://"), "/0"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	b, err := redis.New(ctx, proxy.url(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rec := &recorder{notified: make(chan struct{}, 1)}
	if err := b.Start(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if !rec.wait(5*time.Second, func(_ []int64, resyncs int) bool { return resyncs == 1 }) {
		t.Fatal("the subscription was not confirmed")
	}
	pub, err := redis.New(ctx, rs.URL(), nil) // another node, with its own path to Redis
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish := func(seq int64) {
		t.Helper()
		if err := pub.Publish(ctx, "r1", []store.Event{{RunID: "r1", Seq: seq, Kind: store.KindLog, Data: []byte(`{}`)}}); err != nil {
			t.Fatal(err)
		}
	}
	publish(1)
	if !rec.wait(5*time.Second, func(seqs []int64, _ int) bool { return len(seqs) == 1 }) {
		t.Fatal("seq 1 was not delivered before the cut")
	}

	proxy.setCut(true)
	notReady := func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return b.Ready(rctx) != nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for !notReady() {
		if time.Now().After(deadline) {
			t.Fatal("the broker is still ready 10 s after its path to Redis went silent")
		}
		time.Sleep(100 * time.Millisecond)
	}

	proxy.setCut(false)
	healed := time.Now()
	deadline = healed.Add(10 * time.Second)
	for notReady() {
		if time.Now().After(deadline) {
			t.Fatal("the broker is not ready 10 s after the heal")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Ready again: the subscription was renewed (the run resynced) and
	// events arrive live.
	if !rec.wait(5*time.Second, func(_ []int64, resyncs int) bool { return resyncs >= 2 }) {
		t.Fatal("ready after the heal, but the run's subscription was not renewed (no resync)")
	}
	publish(2)
	if !rec.wait(3*time.Second, func(seqs []int64, _ int) bool { return len(seqs) == 2 && seqs[1] == 2 }) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		t.Fatalf("seq 2, published %v after the heal, not delivered live (got %v)", time.Since(healed).Round(time.Millisecond), rec.seqs)
	}
}
