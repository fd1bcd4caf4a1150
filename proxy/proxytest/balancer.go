package proxytest

import (
	"context"
	"net"
	"sync"
)

// Balancer stands for the load balancer in front of the nodes, as the
// reference agent sees it: its dials (agentclient's Dial) go to the node
// it points at, and wait while a gate is closed (the health checks have
// not yet taken a dead node out; the agent is between connections).
type Balancer struct {
	mu   sync.Mutex
	addr string
	gate chan struct{} // nil: open
}

// NewBalancer points at addr (host:port).
func NewBalancer(addr string) *Balancer { return &Balancer{addr: addr} }

// Point sends the next dials to addr once gate is closed (nil: at once).
func (b *Balancer) Point(addr string, gate chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addr, b.gate = addr, gate
}

// Dial connects to the node pointed at, after the gate opens.
func (b *Balancer) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	b.mu.Lock()
	gate := b.gate
	b.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b.mu.Lock()
	addr := b.addr
	b.mu.Unlock()
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
