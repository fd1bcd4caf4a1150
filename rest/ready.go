package rest

import (
	"context"
	"time"
)

// WriteProbeInterval is the least time between two write probes of
// /readyz. /readyz is unauthenticated and a probe writes (a small file and
// a transaction), so a flood of /readyz must not become a flood of writes;
// the result is cached this long. 5 s still reports a full disk or a
// read-only mount within one period of a typical 10 s readiness check.
const WriteProbeInterval = 5 * time.Second

// writeProbeTimeout bounds one probe. A probe waits for the single writer
// connection behind the writes in flight; longer than this, the store is
// not fit to take more.
const writeProbeTimeout = 2 * time.Second

// writeProber is a store that can prove it accepts writes (store/sqlite).
type writeProber interface {
	ProbeWrite(ctx context.Context) error
}

// writeProbe runs a store's write probe at most once per interval and
// caches the result for the callers in between.
type writeProbe struct {
	probe func(ctx context.Context) error
	every time.Duration
	turn  chan struct{} // one caller at a time; guards at and err
	at    time.Time     // when the cached result was taken (zero: never)
	err   error
}

func newWriteProbe(probe func(ctx context.Context) error, every time.Duration) *writeProbe {
	return &writeProbe{probe: probe, every: every, turn: make(chan struct{}, 1)}
}

// check returns the cached result if it is fresh, else probes. The probe
// runs detached from the caller's cancellation (with its own timeout), so
// that a client giving up does not cache a failure the store never had.
func (p *writeProbe) check(ctx context.Context) error {
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.turn }()
	if !p.at.IsZero() && time.Since(p.at) < p.every {
		return p.err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeProbeTimeout)
	defer cancel()
	p.err = p.probe(pctx)
	p.at = time.Now()
	return p.err
}
