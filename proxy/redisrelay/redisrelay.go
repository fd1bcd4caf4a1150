// Package redisrelay relays commands between runhub nodes through Redis.
//
// Presence: the node holding a run's agent keeps the key
// runhub:agent:<run> set to its node id with a TTL it refreshes; a node
// that claims a run already held elsewhere tells the old node to close its
// connection (a newer agent connection replaces the older, on any node).
// Requests and replies travel over pub/sub on each node's own channel
// runhub:node:<id>, correlated by id. Pub/sub is at most once: a request
// or reply lost to a Redis outage ends as a timeout (504), never as a
// command run twice by the relay. A request that no node received (the
// claim names a node that died) or that the node refused because its
// agent left (it drains) or its relay was closing comes back as
// proxy.ErrAgentMoving: it was not delivered, so the proxy sends it again
// once the agent is claimed by another node. A draining node hands its claims off (Handoff) rather than
// releasing them, so that commands wait for the agent's next node.
package redisrelay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"

	"runhub/proxy"
)

// PresenceTTL is how long a claim lives without a refresh; the holder
// refreshes it every PresenceTTL/3.
const PresenceTTL = 30 * time.Second

// unsubscribeWait bounds how long Close waits for Redis to confirm that
// the node left its channel (see Close). Redis confirms within a round
// trip, after the messages queued before it, which the closing relay
// answers at once; 2 s covers a loaded Redis while an unreachable one
// holds up the node's shutdown no longer than that.
const unsubscribeWait = 2 * time.Second

const (
	presencePrefix = "runhub:agent:"
	nodePrefix     = "runhub:node:"
)

// message is everything sent on a node's channel.
type message struct {
	Kind    string              `json:"kind"` // "req", "rep", "evict"
	Corr    string              `json:"corr,omitempty"`
	ReplyTo string              `json:"reply_to,omitempty"`
	Req     *proxy.RelayRequest `json:"req,omitempty"`
	RunID   string              `json:"run_id,omitempty"`
	Resp    *proxy.Response     `json:"resp,omitempty"`
	Err     string              `json:"err,omitempty"` // no_agent, moving, gone, timeout, bad_sandbox, internal
}

// Relay is one node's end of the relay.
type Relay struct {
	rdb     *goredis.Client
	ps      *goredis.PubSub
	node    string
	log     *slog.Logger
	handler proxy.RelayHandler

	mu      sync.Mutex
	waiting map[string]chan message
	closed  bool               // guarded by mu
	cancel  context.CancelFunc // nil before Start
	left    chan struct{}      // closed when the receive loop stops reading
	done    chan struct{}      // closed when the receive loop and its requests end
}

// New connects to Redis and subscribes to this node's channel; the relay
// serves what arrives there once Start hands it the node's proxy.
func New(ctx context.Context, url string, log *slog.Logger) (*Relay, error) {
	opt, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Relay{rdb: goredis.NewClient(opt), node: uuid.NewString(), log: log,
		waiting: map[string]chan message{}, left: make(chan struct{}), done: make(chan struct{})}
	r.ps = r.rdb.Subscribe(ctx, nodePrefix+r.node)
	if _, err := r.ps.Receive(ctx); err != nil { // the subscription's confirmation
		r.ps.Close()
		r.rdb.Close()
		return nil, fmt.Errorf("redis subscribe: %w", err)
	}
	return r, nil
}

// Start registers h (the node's proxy) as the one handler of relayed
// requests and evictions and serves them until Close (proxy.Relay; called
// by Proxy.Start). The receive loop is the relay's own: Close stops it.
func (r *Relay) Start(_ context.Context, h proxy.RelayHandler) error {
	if h == nil {
		return errors.New("redis relay: nil handler")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return errors.New("redis relay: closed")
	case r.handler != nil:
		return errors.New("redis relay: already started")
	}
	r.handler = h
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.receive(rctx)
	return nil
}

// Close stops serving, waits for the requests in progress and closes the
// connections. Every request Redis delivered here is answered, never
// dropped in silence: the relay unsubscribes first and reads its channel
// until Redis confirms, since Redis writes every message published to
// the channel before that confirmation (a PUBLISH counted this node as a
// receiver, so its sender waits for the reply). The requests read once
// Close has begun are answered "moving" (not delivered: the sender
// follows the agent); those published after the unsubscribe find no
// receiver and are "moving" at their sender.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel() // the requests in progress end
		ctx, stop := context.WithTimeout(context.Background(), unsubscribeWait)
		if err := r.ps.Unsubscribe(ctx, nodePrefix+r.node); err != nil {
			r.log.Warn("relay: unsubscribe failed; requests sent here meanwhile end as timeouts", "err", err)
		} else {
			select {
			case <-r.left:
			case <-ctx.Done():
				r.log.Warn("relay: Redis did not confirm the unsubscribe; requests sent here meanwhile end as timeouts", "waited", unsubscribeWait)
			}
		}
		stop()
	}
	r.ps.Close()
	if cancel != nil {
		<-r.done
	}
	return r.rdb.Close()
}

// NodeID names this node.
func (r *Relay) NodeID() string { return r.node }

// Claim sets the run's presence to this node and returns the previous
// holder if it was another node.
func (r *Relay) Claim(ctx context.Context, runID string) (string, error) {
	prev, err := r.rdb.SetArgs(ctx, presencePrefix+runID, r.node, goredis.SetArgs{TTL: PresenceTTL, Get: true}).Result()
	if errors.Is(err, goredis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("claim: %w", err)
	}
	if prev == r.node {
		return "", nil
	}
	return prev, nil
}

// releaseScript deletes the presence only if this node still holds it.
var releaseScript = goredis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// Release drops the claim if it is still this node's.
func (r *Relay) Release(ctx context.Context, runID string) error {
	if err := releaseScript.Run(ctx, r.rdb, []string{presencePrefix + runID}, r.node).Err(); err != nil && !errors.Is(err, goredis.Nil) {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// handoffScript shortens the presence's TTL to ARGV[2] ms only if this
// node still holds it (a newer claim by another node is left alone).
var handoffScript = goredis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)

// Handoff keeps the claim, if it is still this node's, for at most ttl:
// this node sent the agent on, and the claim tells commands to wait for
// its next node rather than answer that there is no agent.
func (r *Relay) Handoff(ctx context.Context, runID string, ttl time.Duration) error {
	if err := handoffScript.Run(ctx, r.rdb, []string{presencePrefix + runID}, r.node, ttl.Milliseconds()).Err(); err != nil && !errors.Is(err, goredis.Nil) {
		return fmt.Errorf("handoff: %w", err)
	}
	return nil
}

// Owner is the node holding the run's agent, or "".
func (r *Relay) Owner(ctx context.Context, runID string) (string, error) {
	v, err := r.rdb.Get(ctx, presencePrefix+runID).Result()
	if errors.Is(err, goredis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("owner: %w", err)
	}
	return v, nil
}

func (r *Relay) publish(ctx context.Context, node string, m message) (int64, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return 0, err
	}
	return r.rdb.Publish(ctx, nodePrefix+node, b).Result()
}

// Request sends a command to node and waits for the reply.
func (r *Relay) Request(ctx context.Context, node string, req proxy.RelayRequest) (*proxy.Response, error) {
	corr := uuid.NewString()
	ch := make(chan message, 1)
	r.mu.Lock()
	r.waiting[corr] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiting, corr)
		r.mu.Unlock()
	}()
	n, err := r.publish(ctx, node, message{Kind: "req", Corr: corr, ReplyTo: r.node, Req: &req})
	if err != nil {
		if ctx.Err() != nil {
			return nil, proxy.ErrAgentTimeout
		}
		return nil, fmt.Errorf("%w: relay: %w", proxy.ErrAgentGone, err)
	}
	if n == 0 {
		// The claim outlived its node (killed, or stopped since): nothing
		// was delivered, and the agent reconnects elsewhere.
		return nil, fmt.Errorf("%w: node %s does not listen", proxy.ErrAgentMoving, node)
	}
	select {
	case <-ctx.Done():
		return nil, proxy.ErrAgentTimeout
	case m := <-ch:
		switch m.Err {
		case "":
			if m.Resp == nil {
				return nil, fmt.Errorf("%w: empty reply", proxy.ErrAgentGone)
			}
			return m.Resp, nil
		case "no_agent":
			return nil, proxy.ErrNoAgent
		case "timeout":
			return nil, proxy.ErrAgentTimeout
		case "bad_sandbox":
			return nil, proxy.ErrBadSandbox
		case "moving":
			return nil, fmt.Errorf("%w: node %s sent it on", proxy.ErrAgentMoving, node)
		}
		return nil, fmt.Errorf("%w: %s", proxy.ErrAgentGone, m.Err)
	}
}

// Evict asks node to close its connection of the run's agent.
func (r *Relay) Evict(ctx context.Context, node, runID string) error {
	_, err := r.publish(ctx, node, message{Kind: "evict", RunID: runID})
	return err
}

func errKind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, proxy.ErrAgentMoving):
		return "moving"
	case errors.Is(err, proxy.ErrNoAgent):
		return "no_agent"
	case errors.Is(err, proxy.ErrAgentTimeout):
		return "timeout"
	case errors.Is(err, proxy.ErrBadSandbox):
		return "bad_sandbox"
	case errors.Is(err, proxy.ErrAgentGone):
		return "gone"
	}
	return "internal"
}

// receive serves the node's channel until Redis confirms Close's
// unsubscribe (every message sent here before it has been read then) or
// the subscription is closed.
func (r *Relay) receive(ctx context.Context) {
	defer close(r.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(r.left)
	own := nodePrefix + r.node
	for msg := range r.ps.ChannelWithSubscriptions() {
		switch msg := msg.(type) {
		case *goredis.Subscription:
			if msg.Kind == "unsubscribe" && msg.Channel == own {
				return
			}
		case *goredis.Message:
			r.dispatch(ctx, &wg, msg.Payload)
		}
	}
}

// dispatch serves one message; the requests run in goroutines that wg
// counts.
func (r *Relay) dispatch(ctx context.Context, wg *sync.WaitGroup, payload string) {
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		r.log.Warn("relay: bad message", "err", err)
		return
	}
	switch m.Kind {
	case "rep":
		r.mu.Lock()
		ch := r.waiting[m.Corr]
		r.mu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	case "evict":
		r.handler.EvictLocal(m.RunID)
	case "req":
		if m.Req == nil {
			return
		}
		r.mu.Lock()
		closing := r.closed
		r.mu.Unlock()
		wg.Add(1)
		go func() { // the command waits for the agent: one goroutine each, ended by its timeout
			defer wg.Done()
			var resp *proxy.Response
			err := fmt.Errorf("%w: its node's relay is closing", proxy.ErrAgentMoving)
			if !closing { // a closing relay delivers nothing more
				resp, err = r.handler.LocalCommand(ctx, *m.Req)
			}
			rep := message{Kind: "rep", Corr: m.Corr, Resp: resp, Err: errKind(err)}
			if err != nil {
				rep.Resp = nil
			}
			if _, perr := r.publish(context.WithoutCancel(ctx), m.ReplyTo, rep); perr != nil {
				r.log.Warn("relay: reply lost", "to", m.ReplyTo, "err", perr)
			}
		}()
	}
}
