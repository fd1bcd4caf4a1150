// Package node assembles one runhub node from its configuration: the
// store, the artifact blobs, the broker, the hub, the sandbox proxy (with
// connection tokens, key revocations and, across nodes, the command relay),
// the runs service, the Slack relay, the REST API and the web UI. It is the
// one composition root: `runhub serve` and every test that needs a whole
// node call New, so the wiring is written once.
//
// The wiring runs one way. The broker and the relay are built first; the
// hub and the proxy get them at construction, and Start hands the hub to
// the broker and the proxy to the relay as their one handler. Run changes
// go runs.Service → broker → every subscribed hub; nothing is set after
// construction.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"

	"runhub/hub"
	redisbroker "runhub/hub/redis"
	"runhub/proxy"
	"runhub/proxy/redisrelay"
	"runhub/proxy/slack"
	"runhub/proxy/tokens"
	"runhub/rest"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
	"runhub/web"
)

// Config is what a node is built from. Store and DataDir are required.
type Config struct {
	// Store is the opened store; the node owns it from New on: Close (or a
	// New that fails) closes it.
	Store store.Store
	// DataDir keeps what the node generates on first start and reads
	// afterwards: the JWT signing key (unless Tokens.PrivateKeyPEM is set),
	// the link-signing secret and, without S3, the artifact blobs.
	DataDir string
	// RedisURL connects the node to the others (redis://...): events fan
	// out through Redis pub/sub and commands are relayed to the node that
	// holds the run's agent. Empty: a single node, with the in-process
	// broker.
	RedisURL string
	// S3 stores artifacts in an S3-compatible bucket; nil: the
	// filesystem under DataDir/blobs.
	S3 *blob.S3Config
	// Logger is every component's logger (nil: slog.Default()).
	Logger *slog.Logger
	// NodeID names the node in /readyz and the runhub_node_info metric.
	NodeID string

	// Options of each component. The dependencies among them (Store,
	// Broker, Commands, Guard, Tokens, Runs, Relay, ...) are the node's to
	// set and are overwritten; the other fields are passed as given.
	Hub        hub.Config
	Proxy      proxy.Config
	Tokens     tokens.Config // DataDir defaults to the node's
	Revocation tokens.RevocationConfig
	Slack      slack.Config // Token empty: the Slack relay is off
	REST       rest.Config

	// WrapWrites, if set, wraps the store as the runs service writes
	// through it (tests inject faults into the one mutation path);
	// reads and every other component use Store itself.
	WrapWrites func(store.Store) store.Store
}

// Node is one assembled runhub node.
type Node struct {
	log         *slog.Logger
	st          store.Store
	broker      hub.Broker
	redis       *redisbroker.Broker // nil: in-process broker
	relay       *redisrelay.Relay   // nil: a single node
	hub         *hub.Hub
	px          *proxy.Proxy
	tokens      *tokens.Tokens
	revocations *tokens.Revocations
	runs        *runs.Service
	slack       *slack.Relay
	api         *rest.Server

	// streams is the base context of every request served through
	// HTTPServer, cancelled at Close (when Shutdown ran out of time, or
	// was not called): the streams end earlier, at the drain.
	streams       context.Context
	cancelStreams context.CancelFunc

	mu       sync.Mutex
	started  bool
	closeErr error
	closed   bool
}

// New builds a node; nothing runs until Start. ctx bounds the connections
// made while building (Redis).
func New(ctx context.Context, cfg Config) (n *Node, err error) {
	if cfg.Store == nil {
		return nil, errors.New("node: Config.Store is required")
	}
	n = &Node{st: cfg.Store, log: cfg.Logger}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	if cfg.DataDir == "" {
		return nil, errors.New("node: Config.DataDir is required")
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.streams, n.cancelStreams = context.WithCancel(context.Background())

	// The broker and the relay first: the hub and the proxy get them.
	if cfg.RedisURL != "" {
		if n.redis, err = redisbroker.New(ctx, cfg.RedisURL, n.log); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
		n.broker = n.redis
		if n.relay, err = redisrelay.New(ctx, cfg.RedisURL, n.log); err != nil {
			return nil, fmt.Errorf("command relay: %w", err)
		}
	} else {
		n.broker = hub.NewMemoryBroker()
	}

	// `keys revoke` may write the store from another process: the node
	// polls it, refuses revoked keys' tokens and closes what they opened.
	rc := cfg.Revocation
	rc.Store, rc.Logger = n.st, n.log
	n.revocations = tokens.NewRevocations(rc)
	tc := cfg.Tokens
	if tc.DataDir == "" {
		tc.DataDir = cfg.DataDir
	}
	tc.Revocations = n.revocations
	secrets, shared := n.st.(store.Secrets)
	if shared && tc.PrivateKeyPEM == "" {
		// Every node of a shared database signs with the same key.
		pem, err := secrets.Secret(ctx, tokens.SecretName, tokens.GenerateKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("connection tokens: %w", err)
		}
		tc.PrivateKeyPEM = string(pem)
	}
	if n.tokens, err = tokens.Load(tc); err != nil {
		return nil, fmt.Errorf("connection tokens: %w", err)
	}

	writes := n.st
	if cfg.WrapWrites != nil {
		writes = cfg.WrapWrites(n.st)
	}
	if n.runs, err = runs.New(runs.Config{Store: writes, Publisher: n.broker, Logger: n.log}); err != nil {
		return nil, err
	}

	pc := cfg.Proxy
	pc.Tokens, pc.Runs, pc.Store, pc.Logger = n.tokens, n.runs, n.st, n.log
	pc.Relay = nil // an interface: a nil *redisrelay.Relay in it would not be nil
	if n.relay != nil {
		pc.Relay = n.relay
	}
	if n.px, err = proxy.New(pc); err != nil {
		return nil, err
	}

	hc := cfg.Hub
	hc.Store, hc.Broker, hc.Commands, hc.Guard, hc.Logger = n.st, n.broker, n.px.WSCommand, n.revocations, n.log
	if n.hub, err = hub.New(hc); err != nil {
		return nil, err
	}

	sc := cfg.Slack
	sc.Logger = n.log
	n.slack = slack.New(n.st, sc)

	files, blobs, signer, err := openBlobs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.S3 != nil {
		n.log.Info("artifacts: s3", "endpoint", cfg.S3.Endpoint, "bucket", cfg.S3.Bucket)
	}

	rcfg := cfg.REST
	rcfg.Store, rcfg.Runs, rcfg.Logger = n.st, n.runs, n.log
	rcfg.NodeID = cfg.NodeID
	rcfg.Warnings = DeploymentWarnings(cfg)
	for _, w := range rcfg.Warnings {
		n.log.Warn("deployment: " + w)
	}
	rcfg.Stream, rcfg.WS = n.hub.ServeStream, n.hub.ServeWS
	rcfg.Tokens, rcfg.Commands, rcfg.Agent = n.tokens, n.px, n.px.ServeAgent
	rcfg.Relay = n.slack
	rcfg.Extra = web.Mount
	rcfg.Blobs, rcfg.Files, rcfg.Signer = blobs, files, signer
	rcfg.Ready = nil
	if n.redis != nil {
		rcfg.Ready = n.redis.Ready
	}
	n.api = rest.New(rcfg)
	n.api.Registry().MustRegister(n.hub.Collectors()...)
	return n, nil
}

// openBlobs opens the artifact storage: S3 when configured, else the
// filesystem under the data directory (whose signed links files serves).
func openBlobs(ctx context.Context, cfg Config) (*blob.FS, blob.Store, *blob.Signer, error) {
	// A store that keeps secrets holds the link secret, so that a link
	// one node signs opens on every other; else it is a file of the data
	// directory.
	var signer *blob.Signer
	if secrets, ok := cfg.Store.(store.Secrets); ok {
		secret, err := secrets.Secret(ctx, blob.SecretName, blob.GenerateSecret)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("link secret: %w", err)
		}
		if signer, err = blob.NewSigner(secret, nil); err != nil {
			return nil, nil, nil, err
		}
	} else {
		var err error
		if signer, err = blob.LoadSigner(cfg.DataDir, nil); err != nil {
			return nil, nil, nil, err
		}
	}
	if cfg.S3 != nil {
		s3, err := blob.NewS3(*cfg.S3)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("artifact storage: %w", err)
		}
		return nil, s3, signer, nil
	}
	files, err := blob.NewFS(filepath.Join(cfg.DataDir, "blobs"))
	if err != nil {
		return nil, nil, nil, err
	}
	return files, files, signer, nil
}

// Start makes the node live: it loads the revoked keys (a node that cannot
// tell them must not serve their tokens) and polls for more, hands the hub
// to the broker and the proxy to the relay, and starts the Slack worker
// (which posts what an earlier run left pending). Everything it starts
// runs until Close; ctx only bounds the start itself and ends the pollers
// early if cancelled. Call it once, before serving.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.started {
		return errors.New("node: already started or closed")
	}
	n.started = true
	if err := n.revocations.Start(ctx); err != nil {
		return err
	}
	if err := n.hub.Start(ctx); err != nil {
		return err
	}
	if err := n.px.Start(ctx); err != nil {
		return err
	}
	if n.slack.Configured() {
		n.slack.Start(ctx)
	}
	return nil
}

// Close stops the node and waits for everything it runs, in dependency
// order: the proxy (agent connections get the answers to the commands in
// flight, then record their disconnection), the requests' streams (their
// contexts end), the hub (WebSocket streams outlive their handlers), the
// Slack worker, the revocation poller, the relay
// and the broker, and last the store. Stop accepting connections (the HTTP
// server's Shutdown) before. Close may be called more than once; it
// returns the store's close error.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	if n.px != nil {
		// Before the streams' contexts end: the agents' connections are
		// streams too, and a cancelled one would cut the answers to the
		// commands in flight that Proxy.Close waits for (DrainGrace).
		n.px.Close()
	}
	if n.cancelStreams != nil {
		n.cancelStreams()
	}
	if n.hub != nil {
		n.hub.Close()
	}
	if n.slack != nil {
		n.slack.Close() // a no-op if the worker never started
	}
	n.revocations.Close() // nil-safe, and a no-op before Start
	if n.relay != nil {
		if err := n.relay.Close(); err != nil {
			n.log.Warn("close command relay", "err", err)
		}
	}
	if n.redis != nil {
		if err := n.redis.Close(); err != nil {
			n.log.Warn("close broker", "err", err)
		}
	}
	n.closeErr = n.st.Close()
	return n.closeErr
}

// Handler is the node's HTTP API: REST, the hub's /stream and /ws, the
// proxy's /agent/connect and the web UI.
func (n *Node) Handler() http.Handler { return n.api }

// HTTPServer returns a server for Handler with the API's timeouts (see
// rest.Server.HTTPServer). As Shutdown starts, the node drains: streams
// never finish by themselves, so their clients are told to move (see
// drain), while the other requests in flight keep their contexts and
// finish; Close ends whatever is left.
func (n *Node) HTTPServer() *http.Server {
	srv := n.api.HTTPServer()
	srv.BaseContext = func(net.Listener) context.Context { return n.streams }
	srv.RegisterOnShutdown(n.drain)
	return srv
}

// Drain starts a graceful stop: /readyz answers 503 "draining" from now
// on, so that the load balancer takes the node out, while every request
// is still served. Shutdown on HTTPServer's server follows.
func (n *Node) Drain() { n.api.Drain() }

// drain tells every streaming client to reconnect elsewhere: the hub's
// WebSockets close with 1012 and its SSE streams end with a retry hint
// (Hub.Drain), agents are closed with 1012 (Proxy.Close, which waits
// until each has recorded its disconnection).
func (n *Node) drain() {
	n.hub.Drain()
	n.px.Close()
}

// MetricsServer serves only /metrics (rest.Config.SeparateMetrics).
func (n *Node) MetricsServer() *http.Server { return n.api.MetricsServer() }

// Store is the node's store.
func (n *Node) Store() store.Store { return n.st }

// Hub is the node's fan-out.
func (n *Node) Hub() *hub.Hub { return n.hub }

// Proxy holds the node's agent sessions.
func (n *Node) Proxy() *proxy.Proxy { return n.px }

// Tokens mints and verifies the node's connection tokens.
func (n *Node) Tokens() *tokens.Tokens { return n.tokens }

// Revocations is the node's view of the revoked API keys.
func (n *Node) Revocations() *tokens.Revocations { return n.revocations }

// Runs is the node's one mutation path.
func (n *Node) Runs() *runs.Service { return n.runs }

// API is the node's REST server (its metrics registry, for instance).
func (n *Node) API() *rest.Server { return n.api }

// DeploymentWarnings names the settings of cfg that cannot work across
// machines although the rest of it says several machines are meant: a
// shared store (one that keeps the nodes' secrets, PostgreSQL) and a
// broker, with artifacts on this node's filesystem. A single node on
// PostgreSQL with filesystem blobs, and processes sharing one SQLite data
// directory on one machine, are valid and get no warning. (Signing
// secrets cannot be node-local on such a store: it keeps them.)
func DeploymentWarnings(cfg Config) []string {
	_, shared := cfg.Store.(store.Secrets)
	if shared && cfg.RedisURL != "" && cfg.S3 == nil {
		return []string{"artifacts are kept on this node's filesystem (--data-dir) while the store and the broker are shared: " +
			"another node cannot serve or presign them; set RUNHUB_S3_* so that every node uses one bucket"}
	}
	return nil
}
