package sqlite

import (
	"context"
	"encoding/json"
	"time"

	"runhub/store"
)

// WithScanHook has fn told the size of every entry QueryLog and EventsBefore
// copy out of SQLite, so tests can bound what a read holds without timing.
func WithScanHook(fn func(bytes int)) Option { return func(s *Store) { s.onScan = fn } }

// WithBatchHook has fn told the size of every group-commit batch before it
// runs, so tests can see that concurrent mutations shared a commit.
func WithBatchHook(fn func(n int)) Option { return func(s *Store) { s.group.onBatch = fn } }

// QueuedWrites is how many mutations wait for the running batch.
func (s *Store) QueuedWrites() int {
	s.group.mu.Lock()
	defer s.group.mu.Unlock()
	return len(s.group.queue)
}

// WriteFunc runs fn as a mutation through the writer's group commit, so
// tests can make one panic.
func (s *Store) WriteFunc(ctx context.Context, fn func()) error {
	_, err := s.write(ctx, func(tx *wtx) (*store.MutationResult, error) {
		fn()
		return &store.MutationResult{}, nil
	})
	return err
}

// MaxGroupCommit is maxGroupCommit, the most mutations one commit carries.
const MaxGroupCommit = maxGroupCommit

// WithCheckpoints replaces checkpointInterval and walHardFrames, and has fn
// (when not nil) told the mode of every checkpoint and the WAL's frames.
func WithCheckpoints(interval time.Duration, hardFrames int, fn func(mode string, frames int)) Option {
	return func(s *Store) { s.ckpt.interval, s.ckpt.hard, s.ckpt.onCheckpoint = interval, hardFrames, fn }
}

// WithWALRestart replaces walRestartFrames.
func WithWALRestart(frames int) Option { return func(s *Store) { s.ckpt.restart = frames } }

// Exclusive is exclusive: it runs f while no write transaction is open.
func (s *Store) Exclusive(ctx context.Context, f func()) error { return s.exclusive(ctx, f) }

// WALSizeLimit is walSizeLimit, the size the WAL file is cut back to.
const WALSizeLimit = walSizeLimit

// WriteRunFunc rewrites the run's row with an output of "rolled back",
// then fails with fn's error, so tests can see that the rolled-back write
// is never answered.
func (s *Store) WriteRunFunc(ctx context.Context, ref store.RunRef, fn func() error) error {
	_, err := s.mutate(ctx, ref, nil, func(tx *wtx, r *runRow, now time.Time) ([]store.Event, error) {
		r.Output = map[string]json.RawMessage{"v": json.RawMessage(`"rolled back"`)}
		if err := writeRun(tx, r); err != nil {
			return nil, err
		}
		return nil, fn()
	})
	return err
}

// HandOffs is how many batches a leader handed to a queued caller.
func (s *Store) HandOffs() int {
	s.group.mu.Lock()
	defer s.group.mu.Unlock()
	return s.group.handOffs
}

// MaxLeaderBatches is maxLeaderBatches, the most batches one leader runs.
const MaxLeaderBatches = maxLeaderBatches
