-- What PostHog's desktop app lists tasks by: who created a task (the id
-- of the API key), whether it is archived (and since when), whether a
-- product made it for itself. repository and created_by are what the app
-- filters by on every list, so each has an index under the project;
-- origin_product, archived and internal take a few values each and are
-- checked on the project's rows. Same columns as SQLite's 0006.
ALTER TABLE tasks ADD COLUMN created_by  bigint;
ALTER TABLE tasks ADD COLUMN internal    boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN archived    boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN archived_at bigint;
CREATE INDEX tasks_by_repository ON tasks (project_id, repository, deleted, seq);
CREATE INDEX tasks_by_creator ON tasks (project_id, created_by, deleted, seq);
