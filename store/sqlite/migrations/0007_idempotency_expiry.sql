-- Recording an Idempotency-Key also deletes the run's keys older than the
-- TTL (DELETE ... WHERE rid = ? AND created_at < ?). Without this index that
-- statement reads every key the run recorded in the last 48 h, snapshots
-- and all, on every keyed append (an agent's batches are keyed): about
-- 1 ms per append once a run has 5,000 keys. With it, the delete seeks to
-- the expired ones.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (rid, created_at);
