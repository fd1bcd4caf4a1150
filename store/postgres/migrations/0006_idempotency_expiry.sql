-- Recording an Idempotency-Key also deletes the run's keys older than the
-- TTL (DELETE ... WHERE rid = $1 AND created_at < $2). With only the
-- (rid, key) primary key, that statement reads every key the run recorded
-- in the last 48 h on every keyed append (an agent's batches are keyed);
-- with this index it seeks to the expired ones.
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (rid, created_at);
