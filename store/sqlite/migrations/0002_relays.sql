-- The Slack relay's durable outbox: one row per accepted relay_message.
CREATE TABLE relays (
    id          TEXT PRIMARY KEY,           -- relay_id (uuid)
    run_id      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    thread_ts   TEXT NOT NULL,
    text        TEXT NOT NULL,              -- Slack mrkdwn, at most 3,900 characters
    status      TEXT NOT NULL,              -- pending, sent, failed
    attempts    INTEGER NOT NULL DEFAULT 0, -- posts tried (counted before each try)
    last_error  TEXT,
    next_at     INTEGER NOT NULL,           -- unix micros: not before
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX relays_due ON relays (status, next_at);
