package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"runhub/cmd/node"
	"runhub/hub"
	"runhub/proxy"
	"runhub/proxy/slack"
	"runhub/proxy/tokens"
	"runhub/rest"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/postgres"
)

// defaultShutdownTimeout bounds a graceful stop (--shutdown-timeout): in-flight
// requests get this long to finish after SIGINT/SIGTERM (and the drain
// delay) before connections are closed. 25 s fits within the 30 s an
// orchestrator (systemd's TimeoutStopSec default is 90 s, Kubernetes'
// grace period 30 s) gives before it kills the process, with the drain
// delay's default of 0 and a few seconds to spare for closing the store.
const defaultShutdownTimeout = 25 * time.Second

// config is the server's configuration: flags, then RUNHUB_* variables,
// then defaults.
type config struct {
	addr        string
	dataDir     string
	databaseURL *string // PostgreSQL; empty: SQLite in dataDir
	nodeID      string
	maxBody     int64
	maxUpload   int64
	rateLimit   *rest.RateLimit
	redisURL    string
	pprofAddr   string
	writeIvl    time.Duration
	sandboxes   string
	cmdTO       time.Duration
	shutdownTO  time.Duration // in-flight requests' grace at a stop
	ingestIdle  time.Duration // an event_stream upload's longest wait for a line
	drainDelay  time.Duration // /readyz is 503 this long before the listener closes
	logLevel    slog.Level
	logJSON     bool
	// publicURL is the base of every link ("": the request's Host);
	// proxies are the peers whose X-Forwarded-* are believed.
	publicURL   string
	proxies     []netip.Prefix
	metricsAddr string
	// slackLease is how long a node has the Slack relays it took to
	// itself (store/postgres); slackTimeout bounds one Slack call.
	slackLease, slackTimeout time.Duration
	// tokenAudience and tokenIssuer are the aud and iss of client
	// connection tokens (tokens.Config).
	tokenAudience, tokenIssuer string
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// dataDirFlag is shared by every command that opens the store.
func dataDirFlag(fsDefault string) string { return env("RUNHUB_DATA_DIR", fsDefault) }

func loadConfig(args []string) (*config, error) {
	fs := newFlags("serve")
	c := &config{}
	fs.StringVar(&c.addr, "addr", env("RUNHUB_ADDR", ":8080"), "listen address")
	fs.StringVar(&c.dataDir, "data-dir", dataDirFlag("./data"), "data directory (SQLite file, bootstrap key, artifacts on the filesystem)")
	c.databaseURL = databaseURLFlag(fs)
	fs.StringVar(&c.nodeID, "node-id", env("RUNHUB_NODE_ID", ""), "this node's name in logs, metrics and /readyz (empty: host name and a random suffix)")
	fs.StringVar(&c.redisURL, "redis-url", env("RUNHUB_REDIS_URL", ""), "Redis URL for multi-node fan-out (empty: in-process broker)")
	fs.StringVar(&c.publicURL, "public-url", env("RUNHUB_PUBLIC_URL", ""), "the URL clients reach this server at, e.g. https://runhub.example.com; every link is built from it (empty: from each request's Host)")
	proxies := fs.String("trusted-proxies", env("RUNHUB_TRUSTED_PROXIES", ""), "comma-separated CIDRs of reverse proxies whose X-Forwarded-Proto/Host are believed (empty: none)")
	fs.StringVar(&c.tokenAudience, "token-audience", env("RUNHUB_TOKEN_AUDIENCE", tokens.AudienceClient), "the audience (aud) of client connection tokens; "+tokens.PostHogClientAudience+" makes them acceptable to PostHog's agent-server (the same on every node)")
	fs.StringVar(&c.tokenIssuer, "token-issuer", env("RUNHUB_TOKEN_ISSUER", ""), "the issuer (iss) of connection tokens, required when verifying them (empty: no iss claim, none checked, as PostHog's tokens; the same on every node)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", env("RUNHUB_METRICS_ADDR", ""), "serve /metrics on this address instead of the API's, e.g. 127.0.0.1:9090 (empty: on the API address)")
	fs.StringVar(&c.pprofAddr, "pprof-addr", env("RUNHUB_PPROF_ADDR", ""), "serve Go's pprof profiles on this address, e.g. 127.0.0.1:6060 (empty: off)")
	ivl := fs.String("write-interval", env("RUNHUB_WRITE_INTERVAL", hub.DefaultWriteInterval.String()), "least time between two writes to one stream connection (0: write at once)")
	fs.StringVar(&c.sandboxes, "sandbox-hosts", env("RUNHUB_SANDBOX_HOSTS", ""), "comma-separated hosts HTTP sandboxes may be called on: host:port, or a bare host for ports 80 and 443")
	cmdTO := fs.String("command-timeout", env("RUNHUB_COMMAND_TIMEOUT", proxy.DefaultCommandTimeout.String()), "how long a command waits for the agent's answer")
	ingestIdle := fs.String("ingest-idle-timeout", env("RUNHUB_INGEST_IDLE_TIMEOUT", rest.DefaultIngestIdleTimeout.String()), "how long an event_stream upload may go without a line before it is ended (408); lines that keep coming keep it open")
	shutdownTO := fs.String("shutdown-timeout", env("RUNHUB_SHUTDOWN_TIMEOUT", defaultShutdownTimeout.String()), "at SIGTERM, how long in-flight requests get to finish before connections are closed")
	drainDelay := fs.String("drain-delay", env("RUNHUB_DRAIN_DELAY", "0s"), "at SIGTERM, how long /readyz answers 503 while the node still serves, before it stops accepting (behind a load balancer: its health check interval times the failures it needs)")
	slackLease := fs.String("slack-lease", env("RUNHUB_SLACK_LEASE", slack.DefaultLease.String()), "how long a node has the Slack messages it took to itself; a node that dies mid-delivery holds its messages back this long (the same on every node; at least twice --slack-timeout plus 1s)")
	slackTimeout := fs.String("slack-timeout", env("RUNHUB_SLACK_TIMEOUT", slack.DefaultTimeout.String()), "how long one Slack API call may take")
	maxBody := fs.Int64("max-body-bytes", 0, "request body limit in bytes (RUNHUB_MAX_BODY_BYTES; default 32 MiB)")
	maxUpload := fs.Int64("max-upload-bytes", 0, "largest artifact artifacts/prepare_upload takes, uploaded straight to storage, in bytes (RUNHUB_MAX_UPLOAD_BYTES; default 1 GiB)")
	rl := fs.String("rate-limit", env("RUNHUB_RATE_LIMIT", "off"), `per-key rate limit: "off", "on" (480/min, 4800/h) or "N/min,M/h"`)
	level := fs.String("log-level", env("RUNHUB_LOG_LEVEL", "info"), "debug, info, warn or error")
	format := fs.String("log-format", env("RUNHUB_LOG_FORMAT", "text"), "text or json")
	if rest, err := parseFlags(fs, args); err != nil {
		return nil, err
	} else if len(rest) > 0 {
		return nil, usageError{fmt.Sprintf("serve: unexpected argument %q", rest[0])}
	}
	c.maxBody = *maxBody
	c.maxUpload = *maxUpload
	if err := tokens.CheckClientAudience(c.tokenAudience); err != nil {
		return nil, usageError{err.Error()}
	}
	if !utf8.ValidString(c.tokenAudience) || !utf8.ValidString(c.tokenIssuer) {
		return nil, usageError{"token audience and issuer must be UTF-8"}
	}
	if c.publicURL != "" {
		u, err := rest.ParsePublicURL(c.publicURL)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		c.publicURL = u
	}
	if ps, err := rest.ParseTrustedProxies(*proxies); err != nil {
		return nil, usageError{err.Error()}
	} else {
		c.proxies = ps
	}
	if d, err := time.ParseDuration(*cmdTO); err != nil || d <= 0 {
		return nil, usageError{fmt.Sprintf("bad command timeout %q", *cmdTO)}
	} else {
		c.cmdTO = d
	}
	if d, err := time.ParseDuration(*ingestIdle); err != nil || d <= 0 {
		return nil, usageError{fmt.Sprintf("bad ingest idle timeout %q", *ingestIdle)}
	} else {
		c.ingestIdle = d
	}
	if d, err := time.ParseDuration(*shutdownTO); err != nil || d <= 0 {
		return nil, usageError{fmt.Sprintf("bad shutdown timeout %q", *shutdownTO)}
	} else {
		c.shutdownTO = d
	}
	if d, err := time.ParseDuration(*drainDelay); err != nil || d < 0 {
		return nil, usageError{fmt.Sprintf("bad drain delay %q", *drainDelay)}
	} else {
		c.drainDelay = d
	}
	if d, err := time.ParseDuration(*slackTimeout); err != nil || d <= 0 {
		return nil, usageError{fmt.Sprintf("bad Slack timeout %q", *slackTimeout)}
	} else {
		c.slackTimeout = d
	}
	if d, err := time.ParseDuration(*slackLease); err != nil || d <= 0 {
		return nil, usageError{fmt.Sprintf("bad Slack lease %q", *slackLease)}
	} else if err := slack.CheckLease(d, c.slackTimeout); err != nil {
		return nil, usageError{err.Error() + " (--slack-lease, --slack-timeout)"}
	} else {
		c.slackLease = d
	}
	if d, err := time.ParseDuration(*ivl); err != nil || d < 0 {
		return nil, usageError{fmt.Sprintf("bad write interval %q", *ivl)}
	} else {
		c.writeIvl = d
	}
	if c.maxBody == 0 {
		if v := os.Getenv("RUNHUB_MAX_BODY_BYTES"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return nil, usageError{"RUNHUB_MAX_BODY_BYTES must be a positive integer"}
			}
			c.maxBody = n
		}
	}
	if c.maxUpload == 0 {
		if v := os.Getenv("RUNHUB_MAX_UPLOAD_BYTES"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return nil, usageError{"RUNHUB_MAX_UPLOAD_BYTES must be a positive integer"}
			}
			c.maxUpload = n
		}
	} else if c.maxUpload < 0 {
		return nil, usageError{"--max-upload-bytes must be a positive integer"}
	}
	var err error
	if c.rateLimit, err = parseRateLimit(*rl); err != nil {
		return nil, err
	}
	if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, usageError{fmt.Sprintf("bad log level %q", *level)}
	}
	c.logJSON = *format == "json"
	return c, nil
}

func parseRateLimit(v string) (*rest.RateLimit, error) {
	switch v {
	case "", "off":
		return nil, nil
	case "on":
		rl := rest.DefaultRateLimit
		return &rl, nil
	}
	var rl rest.RateLimit
	for _, part := range strings.Split(v, ",") {
		n, unit, ok := strings.Cut(strings.TrimSpace(part), "/")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count <= 0 {
			return nil, usageError{fmt.Sprintf("bad rate limit %q", v)}
		}
		switch unit {
		case "min", "m":
			rl.PerMinute = count
		case "h", "hour":
			rl.PerHour = count
		default:
			return nil, usageError{fmt.Sprintf("bad rate limit unit %q", unit)}
		}
	}
	return &rl, nil
}

func dbPath(dataDir string) string { return filepath.Join(dataDir, "runhub.db") }

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := loadConfig(args)
	if err != nil {
		return err
	}
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	var lh slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.logJSON {
		lh = slog.NewJSONHandler(stderr, opts)
	}
	if cfg.nodeID == "" {
		cfg.nodeID = generatedNodeID()
	}
	log := slog.New(lh).With("node", cfg.nodeID)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if err := secureDataDir(cfg.dataDir); err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.dataDir, *cfg.databaseURL, postgres.WithRelayLease(cfg.slackLease))
	if err != nil {
		return err
	}
	if err := bootstrap(ctx, st, cfg.dataDir, log); err != nil {
		st.Close()
		return err
	}
	ncfg := node.Config{Store: st, DataDir: cfg.dataDir, RedisURL: cfg.redisURL, Logger: log, NodeID: cfg.nodeID,
		Tokens: tokens.Config{
			PrivateKeyPEM:        os.Getenv("RUNHUB_JWT_PRIVATE_KEY"),
			PreviousPublicKeyPEM: os.Getenv("RUNHUB_JWT_PREVIOUS_PUBLIC_KEY"),
			ClientAudience:       cfg.tokenAudience,
			Issuer:               cfg.tokenIssuer,
		},
		Proxy: proxy.Config{CommandTimeout: cfg.cmdTO},
		REST: rest.Config{
			MaxBodyBytes:    cfg.maxBody,
			MaxUploadBytes:  cfg.maxUpload,
			RateLimit:       cfg.rateLimit,
			PublicURL:       cfg.publicURL,
			TrustedProxies:  cfg.proxies,
			SeparateMetrics: cfg.metricsAddr != "",
			Timeouts:        rest.Timeouts{IngestIdle: cfg.ingestIdle},
		},
	}
	ivl := cfg.writeIvl
	if ivl == 0 {
		ivl = -1 // hub.Config: negative is "none"
	}
	ncfg.Hub.WriteInterval = ivl
	if cfg.sandboxes != "" {
		if ncfg.Proxy.Sandboxes, err = proxy.NewSandboxClient(strings.Split(cfg.sandboxes, ",")); err != nil {
			st.Close()
			return usageError{err.Error()}
		}
	}
	if ep := os.Getenv("RUNHUB_S3_ENDPOINT"); ep != "" {
		ncfg.S3 = &blob.S3Config{Endpoint: ep, Bucket: os.Getenv("RUNHUB_S3_BUCKET"),
			Region: env("RUNHUB_S3_REGION", "us-east-1"), PathStyle: os.Getenv("RUNHUB_S3_PATH_STYLE") == "true",
			AccessKey: os.Getenv("RUNHUB_S3_ACCESS_KEY"), SecretKey: os.Getenv("RUNHUB_S3_SECRET_KEY")}
	}
	maxAttempts, _ := strconv.Atoi(env("RUNHUB_SLACK_MAX_ATTEMPTS", "5"))
	ncfg.Slack = slack.Config{Token: os.Getenv("RUNHUB_SLACK_BOT_TOKEN"),
		BaseURL: os.Getenv("RUNHUB_SLACK_API_URL"), MaxAttempts: maxAttempts, Lease: cfg.slackLease, Timeout: cfg.slackTimeout}
	n, err := node.New(ctx, ncfg) // owns the store from here on
	if err != nil {
		return err
	}
	defer n.Close() // after the server stopped (below), or at an early return
	if cfg.redisURL != "" {
		log.Info("broker: redis pub/sub")
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	if cfg.pprofAddr != "" {
		stopPprof, err := servePprof(cfg.pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	if cfg.publicURL == "" {
		log.Warn("links (log_url, ws_url, artifact URLs, pagination) are built from each request's Host header; set --public-url (RUNHUB_PUBLIC_URL) so that a forged Host cannot point them elsewhere")
	}
	if cfg.metricsAddr != "" {
		stopMetrics, err := serveMetrics(n.MetricsServer(), cfg.metricsAddr, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Header, body and idle timeouts: rest.Timeouts; the streams' contexts
	// end when the shutdown starts, so that Shutdown can wait for the rest.
	srv := n.HTTPServer()
	srv.ErrorLog = slog.NewLogLogger(lh, slog.LevelWarn)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	base := cfg.publicURL
	if base == "" {
		base = publicURL(ln.Addr())
	}
	log.Info("runhub listening", "addr", ln.Addr().String(), "url", base, "data_dir", cfg.dataDir,
		"open", base+"/ (sign in with the key in "+filepath.Join(cfg.dataDir, bootstrapKeyFile)+")",
		"try", fmt.Sprintf(`curl -H "Authorization: Bearer $(cat %s)" %s/api/projects/1/tasks/`,
			filepath.Join(cfg.dataDir, bootstrapKeyFile), base))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// The drain: /readyz turns 503 at once; after the drain delay the
	// listener closes, streaming clients are told to move (1012, SSE
	// retry hints; see node.HTTPServer) and the other requests in flight
	// get the shutdown timeout to finish.
	n.Drain()
	log.Info("draining", "drain_delay", cfg.drainDelay.String(), "shutdown_timeout", cfg.shutdownTO.String())
	time.Sleep(cfg.drainDelay)
	log.Info("shutting down", "timeout", cfg.shutdownTO.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTO)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown incomplete", "err", err)
		srv.Close()
	}
	n.Close() // proxy, hub, pollers, broker, store: in that order
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// publicURL is the URL a person on this machine would open.
func publicURL(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		if ok {
			return fmt.Sprintf("http://localhost:%d", tcp.Port)
		}
		return "http://" + a.String()
	}
	return "http://" + tcp.String()
}

// bootstrapKeyFile holds the first API key, readable by the owner only.
const bootstrapKeyFile = "bootstrap-key"

// bootstrap creates project 1 and an all-projects `*` key on first start,
// on the first node to find the store empty (Store.Bootstrap serialises
// nodes starting together). The key goes to a 0600 file of this node's
// data directory; only its path is logged.
func bootstrap(ctx context.Context, st store.Store, dataDir string, log *slog.Logger) error {
	projects, err := st.ListProjects(ctx)
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if len(projects) > 0 {
		return nil
	}
	secret, prefix, hash := store.GenerateAPIKey()
	path := filepath.Join(dataDir, bootstrapKeyFile)
	// The key is written before it exists in the store, so that a crash
	// between the two never leaves a valid key nobody can read; it takes
	// its name only if this node is the one that bootstrapped.
	pending := path + ".pending"
	if err := os.WriteFile(pending, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("write bootstrap key: %w", err)
	}
	if err := os.Chmod(pending, 0o600); err != nil {
		return fmt.Errorf("chmod bootstrap key: %w", err)
	}
	created, err := st.Bootstrap(ctx, "Default", store.NewAPIKey{Label: "bootstrap", Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeAll}, AllProjects: true})
	if err != nil || !created {
		os.Remove(pending)
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		return nil // another node bootstrapped the shared store
	}
	if err := os.Rename(pending, path); err != nil {
		return fmt.Errorf("bootstrap key: %w", err)
	}
	log.Info("bootstrap: created project and API key", "key_file", path)
	return nil
}

// generatedNodeID names a node started without --node-id: its host name,
// so an operator recognises the machine, and a random suffix, so that
// processes on one machine (or a restarted one) are told apart.
func generatedNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "runhub"
	}
	b := make([]byte, 3)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return fmt.Sprintf("%s-%x", host, b)
}
