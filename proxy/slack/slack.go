// Package slack relays messages to a run's Slack thread: an outbox in the
// store, a worker that posts each message exactly once (chat.postMessage
// with retries, Retry-After and a crash-safe check before a second try),
// and the Markdown to mrkdwn conversion applied when a message is queued.
package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"runhub/store"
)

// Relays is the outbox as the Slack relay uses it (store.Store).
type Relays interface {
	CreateRelay(ctx context.Context, r store.Relay) error
	DueRelays(ctx context.Context, now time.Time, limit int) ([]store.Relay, error)
	UpdateRelay(ctx context.Context, r store.Relay) error
}

// Config configures the relay.
type Config struct {
	Token       string // bot token; empty: the relay is not configured
	BaseURL     string // default https://slack.com/api
	MaxAttempts int    // posts tried per message before it is failed (default 5)
	// MinBackoff and MaxBackoff bound the retry delay (defaults 1 s, 5 min).
	MinBackoff, MaxBackoff time.Duration
	Poll                   time.Duration // how often the outbox is read (default 1 s)
	// Timeout bounds one Slack Web API call (default DefaultTimeout); it
	// is the Client's timeout when Client is nil.
	Timeout time.Duration
	// Lease is how long the store leases the relays DueRelays hands out
	// (store/postgres WithRelayLease; default DefaultLease). The worker
	// starts a delivery only while enough of it is left (CheckLease), so
	// that no other node takes a relay whose post is in flight.
	Lease  time.Duration
	Client *http.Client
	Logger *slog.Logger
	Now    func() time.Time
}

// DefaultTimeout bounds one Slack Web API call: Slack answers in well
// under a second, so 30 s means it is in trouble; the message is retried
// later (after a thread lookup) rather than held by a hung connection.
const DefaultTimeout = 30 * time.Second

// DefaultLease is the relay lease of store/postgres
// (postgres.DefaultRelayLease): twice the longest delivery at the default
// timeout (a lookup and a post, 60 s), so that a slow Slack does not make
// the worker hand most of a batch back, and short enough that the messages
// of a node that died wait two minutes at most.
const DefaultLease = 2 * time.Minute

// leaseSlack is the part of a lease kept free after a delivery's budget,
// to record the outcome while the relay is still this worker's: a store
// write takes milliseconds, a second covers a slow one.
const leaseSlack = time.Second

// deliveryBudget is the longest one delivery may take: a thread lookup
// (after an earlier attempt) and a post, each bounded by timeout.
func deliveryBudget(timeout time.Duration) time.Duration { return 2 * timeout }

// CheckLease says whether a relay lease leaves room for one delivery and
// the record of its outcome (2 × timeout + 1 s). The worker never lets a
// Slack call outlive the lease (Run), so a shorter lease would not post
// twice, but it would cut off a slow delivery that Slack still finishes,
// and the retry would then find it in the thread: time spent for nothing.
// A node refuses such a configuration at start.
func CheckLease(lease, timeout time.Duration) error {
	if need := deliveryBudget(timeout) + leaseSlack; lease < need {
		return fmt.Errorf("slack relay lease %v is too short: it must be at least %v (a thread lookup and a post, each up to the Slack timeout %v, and %v to record the outcome), or slow deliveries would be cut off before Slack answers",
			lease, need, timeout, leaseSlack)
	}
	return nil
}

// Relay posts accepted relay messages to their Slack threads.
//
// Exactly once: before each post the message's attempt count is stored,
// and the post carries Slack message metadata
// ({"event_type": "runhub_relay", "event_payload": {"relay_id"}}). A message
// whose count shows an earlier try (the worker may have died after Slack
// accepted it and before recording that) is first looked for in its thread
// (conversations.replies with its metadata); when found it is marked sent
// without posting again. Slack's client_msg_id is not used: Slack does not
// promise to deduplicate chat.postMessage by it.
type Relay struct {
	cfg   Config
	store Relays
	wake  chan struct{}

	mu     sync.Mutex
	cancel context.CancelFunc // ends the worker Start launched
	done   chan struct{}      // closed when that worker has returned
}

// New builds the relay over the outbox.
func New(st Relays, cfg Config) *Relay {
	if cfg.BaseURL == "" {
		cfg.BaseURL = "https://slack.com/api"
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Relay{cfg: cfg, store: st, wake: make(chan struct{}, 1)}
}

// Configured reports whether Slack credentials are set.
func (s *Relay) Configured() bool { return s != nil && s.cfg.Token != "" }

// Enqueue stores a message for the run's thread and wakes the worker; the
// text is converted to mrkdwn now, so what is stored is what is posted.
func (s *Relay) Enqueue(ctx context.Context, id, runID, channel, threadTS, markdown string) error {
	if err := s.store.CreateRelay(ctx, store.Relay{ID: id, RunID: runID, Channel: channel, ThreadTS: threadTS,
		Text: ToMrkdwn(markdown), NextAt: s.cfg.Now()}); err != nil {
		return err
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Start runs the worker (Run) in the background until ctx ends or Close.
// It starts at most one worker; later calls do nothing.
func (s *Relay) Start(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		s.Run(ctx)
	}(s.done)
}

// Close stops the worker Start launched and waits until it has returned,
// so that the store may close: a post in flight is abandoned (the message
// stays in the outbox, and the next worker looks in the thread before
// posting it again), a message waiting for its backoff stays due later.
func (s *Relay) Close() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// Run posts due messages until ctx ends; pending messages survive a
// restart in the outbox.
//
// A batch is leased from the time it is taken (store/postgres). Every
// Slack call of its deliveries ends leaseSlack before the lease does, and
// a delivery starts only while a post (Timeout) still fits; the relays of
// the batch that are left then are handed back (the lease is still this
// worker's) and the outbox is read again at once. Without that, a batch of
// slow posts outlived its lease, another node took the rest of the batch
// and both posted them.
func (s *Relay) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		taken := s.cfg.Now()
		due, err := s.store.DueRelays(ctx, taken, 50)
		if err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("slack relay: reading the outbox failed", "err", err)
		}
		// The calls of every delivery end here, so that the outcome is
		// recorded while the relay is still this worker's.
		callsEnd := taken.Add(s.cfg.Lease - leaseSlack)
		again := false
		for i, r := range due {
			if ctx.Err() != nil {
				s.handBack(ctx, due[i:]...)
				return
			}
			if callsEnd.Sub(s.cfg.Now()) < s.cfg.Timeout {
				s.handBack(ctx, due[i:]...)
				// A fresh batch is read at once; a lease too short for
				// even one post (CheckLease) waits for the next poll.
				if again = i > 0; !again {
					s.cfg.Logger.Warn("slack relay: the lease leaves no time for a delivery", "err", CheckLease(s.cfg.Lease, s.cfg.Timeout))
				}
				break
			}
			dctx, cancel := context.WithDeadline(ctx, callsEnd)
			s.deliver(ctx, dctx, r)
			cancel()
		}
		if again {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

// slackError is a refusal by Slack: retryable after the given delay, or
// not at all.
type slackError struct {
	msg        string
	retry      bool
	retryAfter time.Duration
}

func (e *slackError) Error() string { return e.msg }

// deliver posts one relay (after looking in its thread when an earlier
// attempt is on record). ctx is the worker's: when it ends, the relay is
// handed back; the Slack calls run under dctx, which also ends shortly
// before the relay's lease, and then the relay is retried later like any
// failed post (the next taker looks in the thread first).
func (s *Relay) deliver(ctx, dctx context.Context, r store.Relay) {
	log := s.cfg.Logger.With("relay_id", r.ID, "run_id", r.RunID)
	if r.Attempts > 0 {
		found, err := s.posted(dctx, r)
		if err == nil && found {
			r.Status, r.LastError = store.RelaySent, ""
			s.save(ctx, r)
			log.Info("slack relay: already in the thread; not posted again")
			return
		}
		if err != nil {
			if ctx.Err() != nil {
				s.handBack(ctx, r) // the next taker looks again
				return
			}
			s.retryLater(ctx, r, err)
			return
		}
	}
	r.Attempts++
	if err := s.store.UpdateRelay(ctx, r); err != nil { // the try is on record before it happens
		log.Warn("slack relay: recording the attempt failed", "err", err)
		return
	}
	if err := s.post(dctx, r); err != nil {
		if ctx.Err() != nil {
			s.handBack(ctx, r) // the next taker looks in the thread first
			return
		}
		s.retryLater(ctx, r, err)
		return
	}
	r.Status, r.LastError = store.RelaySent, ""
	s.save(ctx, r)
	log.Info("slack relay: posted", "attempts", r.Attempts)
}

// handBack returns relays this worker took but does not finish because it
// is shutting down. Their new next_at (now) ends the lease that a store
// shared by several nodes (store/postgres) gave them in DueRelays, so the
// next worker, on this node after a restart or on another node, takes them
// at once instead of when the lease runs out (minutes). A relay with an
// attempt on record is looked for in the thread before it is posted again.
func (s *Relay) handBack(ctx context.Context, rs ...store.Relay) {
	for _, r := range rs {
		r.NextAt = s.cfg.Now()
		s.save(ctx, r)
	}
}

func (s *Relay) retryLater(ctx context.Context, r store.Relay, err error) {
	var se *slackError
	retry, wait := true, time.Duration(0)
	if errors.As(err, &se) {
		retry, wait = se.retry, se.retryAfter
	}
	r.LastError = err.Error()
	if !retry || r.Attempts >= s.cfg.MaxAttempts {
		r.Status = store.RelayFailed
		s.save(ctx, r)
		s.cfg.Logger.Warn("slack relay: giving up", "relay_id", r.ID, "attempts", r.Attempts, "err", err)
		return
	}
	if wait == 0 {
		// Exponential backoff with full jitter.
		ceil := min(s.cfg.MinBackoff<<min(r.Attempts, 20), s.cfg.MaxBackoff)
		wait = s.cfg.MinBackoff/2 + rand.N(ceil)
	}
	r.NextAt = s.cfg.Now().Add(wait)
	s.save(ctx, r)
}

func (s *Relay) save(ctx context.Context, r store.Relay) {
	if err := s.store.UpdateRelay(context.WithoutCancel(ctx), r); err != nil {
		s.cfg.Logger.Warn("slack relay: saving the outcome failed", "relay_id", r.ID, "err", err)
	}
}

// call POSTs a Slack Web API method with a JSON body and decodes the reply.
// A url.Values body is sent as a form (read methods such as
// conversations.replies take no JSON).
func (s *Relay) call(ctx context.Context, method string, body any, out any) error {
	var rd io.Reader
	ct := "application/json; charset=utf-8"
	if form, ok := body.(url.Values); ok {
		rd, ct = strings.NewReader(form.Encode()), "application/x-www-form-urlencoded"
	} else {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.BaseURL+"/"+method, rd)
	if err != nil {
		return &slackError{msg: err.Error()}
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return &slackError{msg: "slack: " + err.Error(), retry: true}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		wait := time.Second
		if sec, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && sec >= 0 {
			wait = time.Duration(sec) * time.Second
		}
		return &slackError{msg: "slack: rate limited", retry: true, retryAfter: wait}
	case resp.StatusCode >= 500:
		return &slackError{msg: fmt.Sprintf("slack: HTTP %d", resp.StatusCode), retry: true}
	case resp.StatusCode != http.StatusOK:
		return &slackError{msg: fmt.Sprintf("slack: HTTP %d", resp.StatusCode)}
	}
	var ok struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(data, &ok); err != nil {
		return &slackError{msg: "slack: unreadable answer", retry: true}
	}
	if !ok.OK {
		return &slackError{msg: "slack: " + ok.Error, retry: ok.Error == "ratelimited" || ok.Error == "internal_error" || ok.Error == "service_unavailable"}
	}
	if out != nil {
		json.Unmarshal(data, out)
	}
	return nil
}

func (s *Relay) post(ctx context.Context, r store.Relay) error {
	return s.call(ctx, "chat.postMessage", map[string]any{
		"channel": r.Channel, "thread_ts": r.ThreadTS, "text": r.Text, "mrkdwn": true,
		"metadata": map[string]any{"event_type": "runhub_relay", "event_payload": map[string]string{"relay_id": r.ID}},
	}, nil)
}

// posted looks for the relay's message in its thread by its metadata.
func (s *Relay) posted(ctx context.Context, r store.Relay) (bool, error) {
	cursor := ""
	for range 20 { // at most 20 pages of 200 replies
		var out struct {
			Messages []struct {
				Metadata struct {
					EventType    string            `json:"event_type"`
					EventPayload map[string]string `json:"event_payload"`
				} `json:"metadata"`
			} `json:"messages"`
			Meta struct {
				NextCursor string `json:"next_cursor"`
			} `json:"response_metadata"`
		}
		body := url.Values{"channel": {r.Channel}, "ts": {r.ThreadTS}, "include_all_metadata": {"true"}, "limit": {"200"}}
		if cursor != "" {
			body.Set("cursor", cursor)
		}
		if err := s.call(ctx, "conversations.replies", body, &out); err != nil {
			return false, err
		}
		for _, m := range out.Messages {
			if m.Metadata.EventType == "runhub_relay" && m.Metadata.EventPayload["relay_id"] == r.ID {
				return true, nil
			}
		}
		if cursor = out.Meta.NextCursor; cursor == "" {
			return false, nil
		}
	}
	return false, nil
}
