package rest

import (
	"net/http"
	"strconv"
	"sync"

	"runhub/store/blob"
)

// LogLinkCacheSize bounds the log_url links kept for reuse: a link is good
// only for the second it was signed in (see logLinks), so this is the
// number of distinct runs (per link base) answered within one second that
// get a reused link: above the 2,000 runs of the many-runs load, and at
// about 150 bytes a link, at most 1.5 MB. Runs beyond it are signed afresh.
const LogLinkCacheSize = 10_000

// logLinks reuses the signed log_url of a run within the second it was
// signed in. The signer counts a link's expiry in whole seconds from its
// clock, so two signatures of the same path within one second are the same
// bytes: reusing one changes nothing a client can see (the link expires
// exactly when a fresh one would), and spares an HMAC, a query encoding
// and about twenty allocations on every run answer (an agent's
// append_log gets one per event).
type logLinks struct {
	signer *blob.Signer
	max    int

	mu    sync.Mutex
	exp   int64 // the expiry (Unix seconds) of every link in links
	links map[logLinkKey]string
}

type logLinkKey struct{ run, base string }

func newLogLinks(signer *blob.Signer, max int) *logLinks {
	return &logLinks{signer: signer, max: max, links: make(map[logLinkKey]string)}
}

// link returns the signed log_url of run for links starting at base, valid
// LogURLTTL.
func (c *logLinks) link(base, run string) string {
	k := logLinkKey{run: run, base: base}
	exp := c.signer.Now().Add(LogURLTTL).Unix()
	c.mu.Lock()
	if c.exp == exp {
		if l, ok := c.links[k]; ok {
			c.mu.Unlock()
			return l
		}
	}
	c.mu.Unlock()
	p := "/logs/" + run + ".jsonl"
	q := c.signer.Sign(http.MethodGet, p, nil, LogURLTTL)
	l := base + p + "?" + q.Encode()
	// The link's own expiry, not exp: the clock may have moved on to the
	// next second while it was signed.
	signed, err := strconv.ParseInt(q.Get("exp"), 10, 64)
	if err != nil {
		return l
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if signed > c.exp {
		// A new second: every kept link is one second short of what a
		// fresh one would say.
		c.exp = signed
		clear(c.links)
	}
	if signed == c.exp && len(c.links) < c.max {
		c.links[k] = l
	}
	return l
}
