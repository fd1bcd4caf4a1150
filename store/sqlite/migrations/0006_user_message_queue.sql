-- User messages waiting for a run's busy agent (steering queue). A row is
-- deleted when a node takes it for delivery.
CREATE TABLE user_message_queue (
    id         INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order
    run_id     TEXT    NOT NULL,
    params     TEXT    NOT NULL,                  -- JSON object
    created_at INTEGER NOT NULL                   -- unix micros
);
CREATE INDEX user_message_queue_run ON user_message_queue (run_id, id);
