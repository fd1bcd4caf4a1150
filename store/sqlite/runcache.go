package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"runhub/store"
)

// An append needs the whole run (the response renders it), but changes
// only its seq counters; reading and decoding every column of the row was
// most of an append's statements (the driver allocates each column's name
// per query, and the JSON columns are parsed). The writer keeps the
// decoded rows it read, by rid and version (a stamp every other write of
// the row replaces, see migration 0008), and an append reads only rid,
// version and the counters: a row whose stamp matches is the cached one.
// Since the stamp is checked inside the append's own transaction, a write
// by another process, a deleted task (the query still joins the task) or a
// rolled-back write (its stamp is never reused) can never be served stale.

// runCacheBytes bounds what the cache holds (the JSON columns' sizes plus
// runCacheOverhead each): 32 MiB holds 10,000 runs with a few KiB of state
// and output each, more than the runs appended to at once on one node.
// When full it is emptied and refills from the runs still appended to.
const runCacheBytes = 32 << 20

// runCacheMaxEntry is the largest run the cache keeps: a run with a big
// output would take the room of hundreds; it is read whole each time
// instead.
const runCacheMaxEntry = 64 << 10

// runCacheOverhead is what one cached run costs beyond its JSON: the
// struct, its strings and the map entries, about.
const runCacheOverhead = 512

// cachedRun is one decoded row, at version.
type cachedRun struct {
	version int64
	run     store.Run // LastSeq and LogCount are read each time, not from here
	size    int
}

// runCache is owned by the writer: only mutations, one batch at a time,
// use it. The store.Run values it holds share their maps and slices with
// the results of the appends served from them, which is safe because
// neither the cache nor an append changes them: mutations that do (patch,
// output, artifacts) read the row whole and never from the cache.
type runCache struct {
	byRID map[int64]*cachedRun
	bytes int
}

// get returns the run cached for rid at version, or nil.
func (c *runCache) get(rid, version int64) *cachedRun {
	if e := c.byRID[rid]; e != nil && e.version == version {
		return e
	}
	return nil
}

// put caches r, read at version.
func (c *runCache) put(rid, version int64, r *store.Run) {
	size := runCacheOverhead
	for _, v := range r.State {
		size += len(v)
	}
	for _, v := range r.Output {
		size += len(v)
	}
	for _, v := range r.Artifacts {
		size += len(v)
	}
	if size > runCacheMaxEntry {
		c.drop(rid)
		return
	}
	c.drop(rid)
	if c.bytes+size > runCacheBytes {
		clear(c.byRID)
		c.bytes = 0
	}
	if c.byRID == nil {
		c.byRID = make(map[int64]*cachedRun)
	}
	c.byRID[rid] = &cachedRun{version: version, run: *r, size: size}
	c.bytes += size
}

func (c *runCache) drop(rid int64) {
	if e := c.byRID[rid]; e != nil {
		c.bytes -= e.size
		delete(c.byRID, rid)
	}
}

// newVersion is a fresh stamp for a write of a run's row: random, so that
// one a rolled-back write took is never taken again (2^-63 a collision).
func newVersion() int64 { return rand.Int64N(math.MaxInt64) + 1 }

const findRunVersionSQL = "SELECT r.rid, r.version, r.last_seq, r.log_count, " + maxSeq + runFrom +
	"WHERE r.id = ? AND r.project_id = ? AND t.id = ? AND t.deleted = 0"

// appendRun is findRun for a mutation that changes only the run's seq
// counters: served from the writer's cache when the row's version matches.
func appendRun(tx *wtx, ref store.RunRef) (*runRow, error) {
	var rid, version, lastSeq, logCount int64
	var top sql.NullInt64
	err := tx.queryRow(qFindRunVersion, ref.RunID, ref.ProjectID, ref.TaskID).Scan(&rid, &version, &lastSeq, &logCount, &top)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get run: %w", classify(err))
	}
	c := &tx.s.runs
	if e := c.get(rid, version); e != nil {
		r := &runRow{Run: e.run, rid: rid}
		r.LastSeq, r.LogCount = seqCounters(lastSeq, logCount, top)
		return r, nil
	}
	r, err := findRun(tx.queryRow(qFindRun, ref.RunID, ref.ProjectID, ref.TaskID))
	if err != nil {
		return nil, err
	}
	c.put(rid, version, &r.Run)
	return r, nil
}
