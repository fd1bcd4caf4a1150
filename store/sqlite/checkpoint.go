package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// SQLite checkpoints the WAL (copies its committed pages back into the
// database file, so that the WAL can be reused from its start) from inside
// the commit that takes it past wal_autocheckpoint pages. That commit's
// caller (and, with group commit, every writer queued behind it) then waits
// for the copy: a p99 cause under many concurrent appends. The store turns
// the automatic checkpoint off on its writer and checkpoints from a
// goroutine of its own, on a connection of its own, while the writer goes
// on committing (a WAL checkpoint and a write transaction run at the same
// time).

// checkpointInterval is how often the checkpointer copies the WAL back
// while writes arrive. A checkpoint copies each page once however many
// commits rewrote it since the last one, and with thousands of runs
// appended to at once an append rewrites two pages (its run's row, the
// last leaf of its events), so the interval decides how many appends share
// each copy: at 10,000 appends/s over 2,000 runs, 200 ms sees each run
// about once (a copy per page rewritten, about 7 µs of CPU per append)
// while 500 ms sees it 2.5 times (fewer than half the copies). It is also
// how far the WAL grows between checkpoints: about 8 KiB per append, so
// 40 MiB at that rate, far from walHardFrames. Longer is not better: each
// checkpoint syncs the WAL and the database file, and appends stall around
// those syncs, longer the more a checkpoint wrote back. At 10,000 appends/s
// on 2 cores the worst append took about 130 ms; 2 s took it to 260-290 ms
// and left the publishers behind; with the checkpointer's syncs turned off
// (an experiment only: that risks the database on a power loss) it took
// 95 ms; 250 ms measured as 500 ms does.
const checkpointInterval = 500 * time.Millisecond

// walHardFrames bounds the WAL, in frames (pages), when passive
// checkpoints cannot reset it: a PASSIVE checkpoint copies only what no
// reader still needs, and the WAL restarts from its start only when no
// reader uses it, so overlapping readers can keep it growing without end
// (checkpoint starvation, which SQLite's automatic checkpoint suffers
// too). Past this size the checkpointer runs a TRUNCATE checkpoint, which
// waits (up to truncateWait) for the readers of the WAL to finish,
// holding new writes meanwhile, and empties the WAL file. 65,536 frames is
// 256 MiB of 4 KiB pages: twice walRestartFrames, so it runs only when
// readers really pin the WAL.
const walHardFrames = 65536

// walRestartFrames is the WAL's size, in frames, past which the
// checkpointer finishes a checkpoint while no write runs. SQLite starts
// the WAL over from its beginning only when a write begins after a
// checkpoint copied all of it; under a steady load a PASSIVE checkpoint
// (tens of milliseconds: a sync of each file) never does, since appends
// commit while it runs, so the WAL grew until the hard bound and its
// TRUNCATE checkpoint, which held writes for up to truncateWait: measured
// at 8,000 appends/s on 2,000 runs, a begin that waited 60 to 100 ms
// every 2 to 3 s. Past this size the checkpointer copies what the PASSIVE
// checkpoint left (what was committed while it ran) with writes held in
// the group, so the next write starts the WAL over (unless a reader still
// reads it then: readers that always do are what walHardFrames bounds).
// The hold is two syncs, whatever it copies: 10 to 25 ms on this disk
// (median 11 to 15 ms). So the bound sets how often writes are held, and
// how often decides the p99: measured at 10,000 appends/s, a hold at
// 8,192 frames (every interval) took the p99 from about 20 to 22-25 ms,
// at 16,384 (every second, 1.1% of the time) 20.6 against 18.8 ms side
// by side; at 32,768 frames, 128 MiB (every 2 s, 0.7% of the time), 20.1
// against 20.1 ms side by side (17.3-17.5 against 19.6-21.4 ms in runs of
// its own), and the worst append 60-80 ms against 124-134 ms.
const walRestartFrames = 32768

// truncateWait is the checkpointer connection's busy timeout: how long a
// TRUNCATE checkpoint waits for readers (PASSIVE ones never wait). It
// holds the write lock meanwhile, so every write waits as long: 100 ms is
// far longer than the store's reads take (bounded pages), and short
// enough that writers never stall near the busy timeout (readers that
// always overlap can starve the checkpoint; it is tried again an interval
// later rather than holding writes until they fail with ErrBusy).
const truncateWait = 100 * time.Millisecond

// walSizeLimit is the size (bytes) the WAL file is truncated to when it is
// reset (journal_size_limit): without it the file keeps the size of its
// largest burst on disk forever. 192 MiB is past what the WAL reaches
// under a steady heavy load (walRestartFrames, 128 MiB, and an interval's
// 40 MiB, see checkpointInterval), so that a restart does not cut the file
// back for the load to grow it again: growing a file costs each write
// there block allocation and journaling, cutting it back a truncation (64
// MiB cut the file back at every restart).
const walSizeLimit = 192 << 20

// checkpointer runs the store's WAL checkpoints; see checkpointInterval.
type checkpointer struct {
	db       *sql.DB // one connection, used only for checkpoints
	interval time.Duration
	hard     int // walHardFrames, or a test's
	restart  int // walRestartFrames, or a test's
	// exclusive runs a function while no write transaction is open
	// (Store.exclusive).
	exclusive func(ctx context.Context, f func()) error
	wrote     chan struct{} // told (without blocking) after a commit
	cancel    context.CancelFunc
	done      sync.WaitGroup
	// onCheckpoint, when set (tests), is told each checkpoint's mode and
	// the WAL's frames before it.
	onCheckpoint func(mode string, frames int)
}

// committed tells the checkpointer that the WAL grew. It never blocks: a
// commit already waiting to be seen covers this one too.
func (c *checkpointer) committed() {
	if c == nil {
		return
	}
	select {
	case c.wrote <- struct{}{}:
	default:
	}
}

// start opens the checkpointer's connection and starts its goroutine,
// which stop ends and waits for.
func (c *checkpointer) start(dsn string) error {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("open sqlite checkpointer: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	c.db = db
	c.wrote = make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.done.Add(1)
	go func() {
		defer c.done.Done()
		c.loop(ctx)
	}()
	return nil
}

// stop ends the goroutine, waits for it (a checkpoint it runs is
// interrupted), and closes its connection.
func (c *checkpointer) stop() error {
	if c == nil || c.db == nil {
		return nil
	}
	c.cancel()
	c.done.Wait()
	return c.db.Close()
}

// checkpointSweep is how many intervals pass, without a commit through
// the group, before the checkpointer checkpoints anyway: the writes that
// do not go through the group (projects, tasks, keys, the message queue)
// do not tell it, and a PASSIVE checkpoint of a WAL with nothing new costs
// a few microseconds. 10 intervals is 5 s.
const checkpointSweep = 10

// loop checkpoints once per interval after commits, and once per
// checkpointSweep intervals regardless.
func (c *checkpointer) loop(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	idle := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case <-c.wrote:
		default:
			if idle++; idle < checkpointSweep {
				continue
			}
		}
		idle = 0
		if err := c.checkpoint(ctx); err != nil && ctx.Err() == nil {
			// The next interval tries again; the WAL only grows meanwhile.
			slog.Warn("sqlite WAL checkpoint failed", "err", err)
		}
	}
}

// checkpoint runs a PASSIVE checkpoint (it waits for nobody); past
// walRestartFrames, it finishes it with writes held so that the WAL starts
// over; past the hard bound (see walHardFrames), it runs a TRUNCATE one,
// writes held too. Writes wait in the group meanwhile, woken the moment it
// ends, rather than in SQLite's busy handler, whose sleeps (1, 2, 5, 10,
// 15, 20, 25 ms...) overshoot the lock's release.
func (c *checkpointer) checkpoint(ctx context.Context) error {
	frames, err := c.run(ctx, "PASSIVE")
	if err != nil || (frames <= c.restart && frames <= c.hard) {
		return err
	}
	mode := "PASSIVE"
	if frames > c.hard {
		mode = "TRUNCATE"
	}
	if xerr := c.exclusive(ctx, func() { _, err = c.run(ctx, mode) }); xerr != nil {
		return xerr
	}
	return err
}

// run runs one checkpoint of mode and returns how many frames the WAL
// held.
func (c *checkpointer) run(ctx context.Context, mode string) (int, error) {
	var busy, frames, copied int
	if err := c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &frames, &copied); err != nil {
		return 0, fmt.Errorf("%s checkpoint: %w", mode, classify(err))
	}
	if c.onCheckpoint != nil {
		c.onCheckpoint(mode, frames)
	}
	return frames, nil
}
