-- A random stamp each write of a run's row replaces (all of it but the seq
-- counters an append advances): the writer keeps decoded rows by it, so an
-- append reads four columns instead of the whole row (see runCache). Never
-- reused, unlike a counter, so that a stamp a rolled-back write took can
-- never name other contents; 0 for rows not written since.
ALTER TABLE runs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
