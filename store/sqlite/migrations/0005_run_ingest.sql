-- The sequenced event ingest's per-run state: the highest sender seq
-- accepted (the sender's own numbering, separate from run_events.seq) and
-- whether the sender completed its stream. A run without a row never
-- ingested (last_accepted_seq 0).
CREATE TABLE run_ingest (
    rid               INTEGER PRIMARY KEY,
    last_accepted_seq INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0
);
