-- Times are Unix microseconds (UTC). Runs have an integer rid so that the
-- event log's primary key stays small; the public id is the UUID.
CREATE TABLE projects (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    next_task_number INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    label        TEXT    NOT NULL DEFAULT '',
    prefix       TEXT    NOT NULL,
    hash         BLOB    NOT NULL UNIQUE,
    scopes       TEXT    NOT NULL, -- JSON array
    all_projects INTEGER NOT NULL DEFAULT 0,
    projects     TEXT    NOT NULL, -- JSON array of project ids
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE TABLE tasks (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order
    id             TEXT    NOT NULL UNIQUE,
    project_id     INTEGER NOT NULL REFERENCES projects(id),
    task_number    INTEGER NOT NULL,
    slug           TEXT    NOT NULL,
    title          TEXT    NOT NULL,
    description    TEXT    NOT NULL DEFAULT '',
    origin_product TEXT    NOT NULL,
    repository     TEXT,
    json_schema    TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    deleted        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (project_id, task_number)
);
CREATE INDEX tasks_by_project ON tasks (project_id, deleted, seq);

CREATE TABLE runs (
    rid           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    task_rowid    INTEGER NOT NULL REFERENCES tasks(seq),
    project_id    INTEGER NOT NULL,
    stage         TEXT,
    branch        TEXT,
    status        TEXT    NOT NULL,
    environment   TEXT    NOT NULL,
    error_message TEXT,
    output        TEXT,            -- JSON object or NULL
    state         TEXT    NOT NULL, -- JSON object
    artifacts     TEXT    NOT NULL, -- JSON array
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    completed_at  INTEGER,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    log_count     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_task ON runs (task_rowid, rid);

-- The per-run event log. (rid, seq) is gap-free per run.
CREATE TABLE run_events (
    rid        INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    ts         INTEGER,          -- entry timestamp (Unix µs), NULL when unparseable
    data       BLOB    NOT NULL, -- compact JSON object
    PRIMARY KEY (rid, seq)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    rid          INTEGER NOT NULL,
    key          TEXT    NOT NULL,
    request_hash BLOB    NOT NULL,
    response     BLOB    NOT NULL, -- JSON snapshot of the run after the request
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (rid, key)
) WITHOUT ROWID;
