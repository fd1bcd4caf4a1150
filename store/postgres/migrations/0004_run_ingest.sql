-- The sequenced event ingest's per-run state: the highest sender seq
-- accepted (the sender's own numbering, separate from run_events.seq) and
-- whether the sender completed its stream. A run without a row never
-- ingested (last_accepted_seq 0). Written under the run's row lock.
CREATE TABLE run_ingest (
    rid               bigint PRIMARY KEY,
    last_accepted_seq bigint  NOT NULL DEFAULT 0,
    completed         boolean NOT NULL DEFAULT false
);
