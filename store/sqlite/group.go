package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"

	"runhub/store"
)

// maxGroupCommit is the most mutations one transaction and one commit
// carry. Group commit exists because the commit (WAL frames written, the
// transaction begun and ended) costs more than an append's own statements;
// 64 lets a whole round of the many-runs shape (64 concurrent publishers)
// share one commit, while bounding what the first caller of a batch waits
// for (64 small mutations run in about a millisecond) and how many run rows
// one WAL write carries. More callers than that wait for the next batch.
const maxGroupCommit = 64

// maxLeaderBatches is the most batches one leader runs in a row: after its
// own, it runs the batches that queued meanwhile itself rather than hand
// the writer to a queued caller. A hand-off wakes a goroutine that, under
// load, waits for a CPU (measured: 0.3-1.3 ms at 10,000 appends/s on 2
// cores) while the writer stands idle and the queue grows; a leader that
// goes on starts the next commit at once. The bound limits what the
// leader's own caller waits for beyond its commit: 3 more batches, each
// at most maxGroupCommit small mutations (about a millisecond), usually a
// few (0.1-0.2 ms).
const maxLeaderBatches = 4

// txFunc is one mutation's work inside a write transaction. It answers
// the caller; an error leaves nothing of the mutation in the store (the
// batch undoes it with a savepoint).
type txFunc func(tx *wtx) (*store.MutationResult, error)

// pending is one caller's mutation waiting for, or taken into, a batch.
type pending struct {
	ctx context.Context
	fn  txFunc
	// alone, when set instead of fn, runs by itself while no write
	// transaction is open (see Store.exclusive).
	alone func()
	res   *store.MutationResult
	err   error
	// wake is told once, by the leader of the batch that took this
	// mutation: either its outcome is set, or (batch set) it leads batch.
	wake  chan struct{}
	batch []*pending
	self  [1]*pending // the batch of an uncontended caller, without allocating one
	// panicked holds what fn panicked with (and where), to panic with in
	// the caller's own goroutine: the batch runs in its leader's.
	panicked any
}

// errPanicked answers a mutation whose function panicked (its caller then
// panics too, in its own goroutine, see pending.panicked).
var errPanicked = errors.New("mutation panicked")

// group serialises the writer connection's mutations and gathers the
// callers that arrive while one transaction runs into the next one.
//
// It is leader-based, with no goroutine of its own: a caller that finds no
// batch running runs its mutation at once, alone, so an uncontended write
// waits for nobody. Callers that arrive meanwhile queue; when the running
// batch is answered, its leader hands the queue (up to maxGroupCommit) to
// the first queued caller, which runs them all in one transaction, each
// inside a savepoint, and commits once. Every caller returns only after the
// commit that holds its mutation succeeded (or with the error that made it
// fail, in which case nothing of the batch was stored).
type group struct {
	mu      sync.Mutex
	running bool       // a batch is running: newcomers queue
	queue   []*pending // waiting, not yet taken into a batch
	// onBatch, when set (tests), is told the size of every batch before it runs.
	onBatch func(n int)
	// handOffs counts the batches handed to a queued caller (tests see
	// by it that a leader ran the next ones itself).
	handOffs int
}

// write runs fn in a write transaction, sharing it with concurrent
// mutations when there are any, and returns fn's answer once its commit
// succeeded.
func (s *Store) write(ctx context.Context, fn txFunc) (*store.MutationResult, error) {
	return s.take(&pending{ctx: ctx, fn: fn})
}

// exclusive runs f while the writer has no transaction open: writes that
// arrive meanwhile queue in the group, as behind a batch, and are woken
// when f returns. It fails only when ctx ends before f's turn.
func (s *Store) exclusive(ctx context.Context, f func()) error {
	_, err := s.take(&pending{ctx: ctx, alone: f})
	return err
}

// take runs p in its turn: at once when the writer is idle, else in a
// batch of the queue's.
func (s *Store) take(p *pending) (*store.MutationResult, error) {
	ctx := p.ctx
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	g := &s.group
	g.mu.Lock()
	if !g.running {
		g.running = true
		g.mu.Unlock()
		p.self[0] = p
		s.runBatch(p.self[:])
		return p.answer()
	}
	p.wake = make(chan struct{}, 1)
	g.queue = append(g.queue, p)
	g.mu.Unlock()
	select {
	case <-p.wake:
	case <-ctx.Done():
		g.mu.Lock()
		if i := slices.Index(g.queue, p); i >= 0 {
			g.queue = slices.Delete(g.queue, i, i+1)
			g.mu.Unlock()
			return nil, fmt.Errorf("wait for the writer: %w", ctx.Err())
		}
		g.mu.Unlock()
		// Already taken into a batch: whether it is stored is that
		// commit's to say, and the caller must not be told otherwise.
		// The batch is bounded (maxGroupCommit, the busy timeout).
		<-p.wake
	}
	if p.batch != nil {
		s.runBatch(p.batch)
	}
	return p.answer()
}

// answer is the caller's outcome, once its batch has run.
func (p *pending) answer() (*store.MutationResult, error) {
	if p.panicked != nil {
		panic(p.panicked)
	}
	return p.res, p.err
}

// run runs the member's mutation, or its alone function. A panic is
// recovered, so that the batch still rolls it back, answers every member
// and hands the writer on (else every later write would wait forever); the
// caller panics with it.
func (p *pending) run(tx *wtx) {
	defer func() {
		if r := recover(); r != nil {
			p.res, p.err = nil, errPanicked
			p.panicked = fmt.Sprintf("%v [recovered from a store mutation]\n%s", r, debug.Stack())
		}
	}()
	if p.alone != nil {
		p.alone()
		return
	}
	p.res, p.err = p.fn(tx)
}

// runBatch runs batch (batch[0] is the calling goroutine's own mutation)
// and answers every other member, then runs the batches queued meanwhile
// (up to maxLeaderBatches in all, answering all their members) before it
// hands the queue to its next leader.
func (s *Store) runBatch(batch []*pending) {
	own := 1 // batch[0] is answered by returning
	for round := 1; ; round++ {
		if g := &s.group; g.onBatch != nil {
			g.onBatch(len(batch))
		}
		if p := batch[0]; p.alone != nil {
			p.run(nil)
		} else if err := s.commitBatch(batch); err != nil {
			for _, p := range batch {
				if p.err == nil { // a member's own error stands: it stored nothing either way
					p.res, p.err = nil, err
				}
			}
		}
		for _, p := range batch[own:] {
			p.wake <- struct{}{}
		}
		if batch = s.handOff(round < maxLeaderBatches); batch == nil {
			return
		}
		own = 0
	}
}

// handOff takes the next batch from the queue: it returns it when keep
// (the caller runs it), else makes its first member the leader of it. It
// returns nil, marking the writer idle, when nobody waits.
func (s *Store) handOff(keep bool) []*pending {
	g := &s.group
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.running = false
		g.mu.Unlock()
		return nil
	}
	n := min(len(g.queue), maxGroupCommit)
	// An exclusive member runs in a batch of its own, by its own caller
	// (it may take long: the leader's caller is not made to wait for it).
	if g.queue[0].alone != nil {
		n, keep = 1, false
	} else if i := slices.IndexFunc(g.queue[:n], func(p *pending) bool { return p.alone != nil }); i >= 0 {
		n = i
	}
	batch := make([]*pending, n)
	copy(batch, g.queue)
	rest := copy(g.queue, g.queue[n:])
	clear(g.queue[rest:])
	g.queue = g.queue[:rest]
	if keep {
		g.mu.Unlock()
		return batch
	}
	g.handOffs++
	g.mu.Unlock()
	batch[0].batch = batch
	batch[0].wake <- struct{}{}
	return nil
}

// commitBatch runs the members' mutations in one transaction and commits
// it when any of them succeeded. A member that fails is undone to its
// savepoint and answered its own error; the others go on. The returned
// error (begin, savepoint, commit) means nothing of the batch was stored.
func (s *Store) commitBatch(batch []*pending) error {
	// The transaction runs detached from its members' contexts: shared,
	// it must not die with one member's (an interrupted statement rolls the
	// whole transaction back); alone, a context that can end costs a
	// goroutine per statement (the driver's interrupt watch) and one per
	// transaction and per query (database/sql's), half a dozen per append,
	// while what it could interrupt is bounded anyway (a request's size, the
	// busy timeout). A member whose context ended before its turn is
	// answered with that and skipped.
	if p := batch[0]; len(batch) == 1 && p.ctx.Err() != nil {
		p.err = fmt.Errorf("begin: %w", p.ctx.Err())
		return nil
	}
	ctx := context.WithoutCancel(batch[0].ctx)
	sqlTx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", classify(err))
	}
	defer sqlTx.Rollback()
	tx := &wtx{Tx: sqlTx, s: s, ctx: ctx}
	if len(batch) == 1 {
		p := batch[0]
		if p.run(tx); p.err != nil {
			return nil // rolled back by the deferred Rollback
		}
	} else {
		applied := 0
		for _, p := range batch {
			if err := p.ctx.Err(); err != nil {
				p.err = fmt.Errorf("begin: %w", err)
				continue
			}
			if _, err := tx.exec(qSavepoint); err != nil {
				return fmt.Errorf("savepoint: %w", classify(err))
			}
			if p.run(tx); p.err != nil {
				p.res = nil
				// Undo what the member wrote. If the savepoint is gone,
				// SQLite rolled the whole transaction back (a full disk,
				// an I/O error): nothing may be committed then.
				if _, err := tx.exec(qRollbackTo); err != nil {
					return fmt.Errorf("undo a failed mutation: %w", classify(err))
				}
			} else {
				applied++
			}
			if _, err := tx.exec(qRelease); err != nil {
				return fmt.Errorf("release savepoint: %w", classify(err))
			}
		}
		if applied == 0 {
			return nil
		}
	}
	if err := sqlTx.Commit(); err != nil {
		// The driver rolls back a transaction its failed COMMIT left open
		// (a deferred constraint, SQLITE_BUSY), so the connection is clean.
		return fmt.Errorf("commit: %w", classify(err))
	}
	s.ckpt.committed()
	return nil
}

// wtx is the writer's transaction, with its prepared statements bound to it
// once for the whole batch.
type wtx struct {
	*sql.Tx
	s     *Store
	ctx   context.Context
	stmts [numPrepared]*sql.Stmt
	args  []any // reused by the batch's inserts
}

// argBuf returns an empty argument list of capacity n, reusing the
// transaction's.
func (t *wtx) argBuf(n int) []any {
	if cap(t.args) < n {
		t.args = make([]any, 0, n)
	}
	return t.args[:0]
}

// stmt returns prepared query q bound to the transaction.
func (t *wtx) stmt(q int) *sql.Stmt {
	if t.stmts[q] == nil {
		t.stmts[q] = t.Tx.StmtContext(t.ctx, t.s.stmts[q])
	}
	return t.stmts[q]
}

// exec runs prepared query q in the transaction.
func (t *wtx) exec(q int, args ...any) (sql.Result, error) {
	return t.stmt(q).ExecContext(t.ctx, args...)
}

// queryRow runs prepared query q in the transaction.
func (t *wtx) queryRow(q int, args ...any) *sql.Row {
	return t.stmt(q).QueryRowContext(t.ctx, args...)
}
