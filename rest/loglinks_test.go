package rest

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"runhub/store/blob"
)

// TestLogLinksSameAsFresh: a reused log_url is the very link a fresh
// signature would give at that moment (same bytes, same expiry), a new
// second gives a new link that expires a second later, and each expires
// LogURLTTL after it was handed out.
func TestLogLinksSameAsFresh(t *testing.T) {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 29, 12, 0, 0, 100e6, time.UTC).UnixNano())
	signer, err := blob.NewSigner([]byte(strings.Repeat("k", 32)), c.now)
	if err != nil {
		t.Fatal(err)
	}
	links := newLogLinks(signer, LogLinkCacheSize)
	const run = "0190a7e4-0000-7000-8000-000000000001"
	fresh := func(base string) string {
		p := "/logs/" + run + ".jsonl"
		return base + p + "?" + signer.Sign(http.MethodGet, p, nil, LogURLTTL).Encode()
	}
	first := links.link("http://a", run)
	if first != fresh("http://a") {
		t.Fatalf("link %s, want %s", first, fresh("http://a"))
	}
	c.advance(800 * time.Millisecond) // still the same second
	if got := links.link("http://a", run); got != first {
		t.Errorf("same second: %s, want %s", got, first)
	}
	if got := links.link("http://b", run); got != fresh("http://b") {
		t.Errorf("another base: %s, want %s", got, fresh("http://b"))
	}
	c.advance(200 * time.Millisecond) // the next second
	second := links.link("http://a", run)
	if second == first || second != fresh("http://a") {
		t.Errorf("next second: %s, want a fresh %s (first %s)", second, fresh("http://a"), first)
	}
	verify := func(link string) error {
		u, err := url.Parse(link)
		if err != nil {
			t.Fatal(err)
		}
		return signer.Verify(http.MethodGet, u.Path, u.Query())
	}
	// second was handed out at 12:00:01.1: valid until 13:00:01.
	c.advance(LogURLTTL - 200*time.Millisecond)
	if err := verify(second); err != nil {
		t.Errorf("link before its hour: %v", err)
	}
	if err := verify(first); err == nil {
		t.Errorf("the first link still works an hour after it was handed out")
	}
	c.advance(200 * time.Millisecond)
	if err := verify(second); err == nil {
		t.Errorf("the second link still works an hour after it was handed out")
	}
}

// TestLogLinksBounded: no more than the cache's size is kept; runs beyond
// it still get their correct link.
func TestLogLinksBounded(t *testing.T) {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	signer, err := blob.NewSigner([]byte(strings.Repeat("k", 32)), c.now)
	if err != nil {
		t.Fatal(err)
	}
	const size = 3
	links := newLogLinks(signer, size)
	for i := range 2 * size {
		run := strings.Repeat(string(rune('a'+i)), 36)
		l := links.link("http://a", run)
		p := "/logs/" + run + ".jsonl"
		if want := "http://a" + p + "?" + signer.Sign(http.MethodGet, p, nil, LogURLTTL).Encode(); l != want {
			t.Errorf("run %d: %s, want %s", i, l, want)
		}
	}
	if n := len(links.links); n != size {
		t.Errorf("%d links kept, want %d", n, size)
	}
}
