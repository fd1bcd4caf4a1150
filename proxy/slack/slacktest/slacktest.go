// Package slacktest is a local stand-in for Slack's Web API, as the relay
// uses it (chat.postMessage and conversations.replies), for the relay's
// tests and the whole-binary tests of several nodes: Slack is a hosted
// service, so the tests talk to this fake instead.
//
// It answers as Slack documents: a post gets a fresh ts; a thread read
// (conversations.replies) lists the parent message first, then the
// replies oldest first, pages of limit (default 1000) with
// response_metadata.next_cursor and has_more, and carries each message's
// metadata only when include_all_metadata is true. Every request needs the
// bearer token Token.
//
// Several nodes can share one fake and still be told apart: a node whose
// API URL is URL+"/NAME" is recorded as NAME in Post.Node.
package slacktest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Token is the bot token the fake accepts.
const Token = "xoxb-test"

// defaultRepliesLimit is conversations.replies' documented default page.
const defaultRepliesLimit = 1000

// Post is a message Slack accepted.
type Post struct {
	Channel, ThreadTS, Text string
	RelayID                 string // metadata event_payload.relay_id
	Node                    string // the URL prefix the poster used ("" for none)
	TS                      string
}

// Fake is the stand-in server.
type Fake struct {
	URL string
	srv *httptest.Server

	mu sync.Mutex
	// script answers the next postMessage calls: "429:<sec>", "500", "hang"
	// (record the message, then never answer), or "" (accept).
	script      []string
	posts       []Post
	tries       []time.Time
	calls       int // requests of any kind, answered or not
	lookups     int
	lookupsHang bool
	postDelay   time.Duration
	holds       []chan Post // HoldNext's waiters, oldest first
	hang        chan struct{}
	seq         int
}

// Start starts a fake, closed when the test ends.
func Start(t testing.TB) *Fake {
	f := &Fake{hang: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	t.Cleanup(func() { close(f.hang); f.srv.Close() })
	return f
}

// Script sets the answers to the next posts.
func (f *Fake) Script(steps ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = steps
}

// HangLookups makes conversations.replies never answer.
func (f *Fake) HangLookups() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookupsHang = true
}

// SetPostDelay makes every accepted post answer d after it was recorded,
// so that posts are in flight for a while (as a slow Slack's are).
func (f *Fake) SetPostDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.postDelay = d
}

// HoldNext makes the next post that would be accepted be recorded (Slack
// has it) and then not answered until its caller goes away or the fake
// closes: a poster caught mid-delivery. The channel receives that post.
func (f *Fake) HoldNext() <-chan Post {
	c := make(chan Post, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holds = append(f.holds, c)
	return c
}

// Snapshot returns the accepted posts and the times of every post try.
func (f *Fake) Snapshot() ([]Post, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Post(nil), f.posts...), append([]time.Time(nil), f.tries...)
}

// Calls counts the requests of any kind, answered or not.
func (f *Fake) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Lookups counts the conversations.replies calls.
func (f *Fake) Lookups() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+Token {
		fmt.Fprint(w, `{"ok":false,"error":"invalid_auth"}`)
		return
	}
	node := strings.Trim(path.Dir(r.URL.Path), "/")
	switch path.Base(r.URL.Path) {
	case "chat.postMessage":
		f.postMessage(w, r, node)
	case "conversations.replies":
		f.replies(w, r)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *Fake) postMessage(w http.ResponseWriter, r *http.Request, node string) {
	var m struct {
		Channel  string `json:"channel"`
		ThreadTS string `json:"thread_ts"`
		Text     string `json:"text"`
		Metadata struct {
			EventPayload map[string]string `json:"event_payload"`
		} `json:"metadata"`
	}
	if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
		fmt.Fprint(w, `{"ok":false,"error":"invalid_json"}`)
		return
	}
	f.mu.Lock()
	f.tries = append(f.tries, time.Now())
	step := ""
	if len(f.script) > 0 {
		step, f.script = f.script[0], f.script[1:]
	}
	var p Post
	var hold chan Post
	if step == "" || step == "hang" {
		f.seq++
		p = Post{m.Channel, m.ThreadTS, m.Text, m.Metadata.EventPayload["relay_id"], node, fmt.Sprintf("1800000000.%06d", f.seq)}
		f.posts = append(f.posts, p)
		if len(f.holds) > 0 {
			hold, f.holds = f.holds[0], f.holds[1:]
		}
	}
	delay := f.postDelay
	f.mu.Unlock()
	switch {
	case step == "hang":
		<-f.hang
		return
	case hold != nil:
		hold <- p
		select {
		case <-r.Context().Done():
		case <-f.hang:
		}
		return
	case strings.HasPrefix(step, "429:"):
		w.Header().Set("Retry-After", strings.TrimPrefix(step, "429:"))
		w.WriteHeader(http.StatusTooManyRequests)
		return
	case step == "500":
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	json.NewEncoder(w).Encode(map[string]any{"ok": true, "channel": p.Channel, "ts": p.TS})
}

// replies answers conversations.replies: the thread's parent message and
// its replies, a page at a time.
func (f *Fake) replies(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	channel, ts := r.Form.Get("channel"), r.Form.Get("ts")
	limit := defaultRepliesLimit
	if v := r.Form.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			fmt.Fprint(w, `{"ok":false,"error":"invalid_limit"}`)
			return
		}
		limit = min(n, defaultRepliesLimit)
	}
	from := 0
	if c := r.Form.Get("cursor"); c != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(c, "offset:"))
		if err != nil || !strings.HasPrefix(c, "offset:") || n < 0 {
			fmt.Fprint(w, `{"ok":false,"error":"invalid_cursor"}`)
			return
		}
		from = n
	}
	withMeta := r.Form.Get("include_all_metadata") == "true" || r.Form.Get("include_all_metadata") == "1"
	f.mu.Lock()
	f.lookups++
	if f.lookupsHang {
		f.mu.Unlock()
		<-f.hang
		return
	}
	msgs := []map[string]any{{"type": "message", "ts": ts, "thread_ts": ts, "text": "the run's thread"}}
	for _, p := range f.posts {
		if p.Channel == channel && p.ThreadTS == ts {
			m := map[string]any{"type": "message", "ts": p.TS, "thread_ts": ts, "text": p.Text}
			if withMeta {
				m["metadata"] = map[string]any{"event_type": "runhub_relay", "event_payload": map[string]string{"relay_id": p.RelayID}}
			}
			msgs = append(msgs, m)
		}
	}
	f.mu.Unlock()
	page := msgs[min(from, len(msgs)):min(from+limit, len(msgs))]
	out := map[string]any{"ok": true, "messages": page, "has_more": from+limit < len(msgs)}
	if from+limit < len(msgs) {
		out["response_metadata"] = map[string]string{"next_cursor": "offset:" + strconv.Itoa(from+limit)}
	}
	json.NewEncoder(w).Encode(out)
}
