package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"runhub/store"
)

// querier is what both *pgxpool.Pool and pgx.Tx offer.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

const taskColumns = "t.seq, t.id, t.project_id, t.task_number, t.slug, t.title, t.description, t.origin_product, t.repository, t.json_schema, t.created_by, t.internal, t.archived, t.archived_at, t.created_at, t.updated_at"

func scanTask(sc interface{ Scan(...any) error }) (*store.Task, int64, error) {
	var t store.Task
	var rowid, created, updated int64
	var schema *string
	var archivedAt *int64
	if err := sc.Scan(&rowid, &t.ID, &t.ProjectID, &t.Number, &t.Slug, &t.Title, &t.Description, &t.OriginProduct,
		&t.Repository, &schema, &t.CreatedBy, &t.Internal, &t.Archived, &archivedAt, &created, &updated); err != nil {
		return nil, 0, err
	}
	if archivedAt != nil {
		at := fromMicros(*archivedAt)
		t.ArchivedAt = &at
	}
	if schema != nil {
		t.JSONSchema = []byte(*schema)
	}
	t.CreatedAt = fromMicros(created)
	t.UpdatedAt = fromMicros(updated)
	return &t, rowid, nil
}

// schemaText is a task's json_schema as stored: JSON text, or NULL.
func schemaText(t *store.Task) *string {
	if t.JSONSchema == nil {
		return nil
	}
	s := string(t.JSONSchema)
	return &s
}

// CreateTask inserts a task with the project's next task number; the
// project's row lock (taken by the UPDATE) orders concurrent creations.
func (s *Store) CreateTask(ctx context.Context, project int64, nt store.NewTask) (*store.Task, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	var name string
	var number int64
	err = tx.QueryRow(ctx, "UPDATE projects SET next_task_number = next_task_number + 1 WHERE id = $1 RETURNING name, next_task_number - 1", project).Scan(&name, &number)
	if err != nil {
		return nil, notFound(err, "next task number")
	}
	now := s.clock() // read while holding the project's lock, so time follows task numbers
	t := &store.Task{
		ID: uuid.NewString(), ProjectID: project, Number: number, Slug: store.TaskSlug(name, number),
		Title: nt.Title, Description: nt.Description, OriginProduct: nt.OriginProduct, Repository: nt.Repository,
		JSONSchema: nt.JSONSchema, CreatedBy: nt.CreatedBy, Internal: nt.Internal, CreatedAt: now, UpdatedAt: now,
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tasks (id, project_id, task_number, slug, title, description, origin_product, repository, json_schema, created_by, internal, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		t.ID, project, number, t.Slug, t.Title, t.Description, t.OriginProduct, t.Repository, schemaText(t), t.CreatedBy, t.Internal, micros(now), micros(now)); err != nil {
		return nil, fmt.Errorf("insert task: %w", classify(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit task: %w", classify(err))
	}
	return t, nil
}

// Row locks taskRow may take: forUpdate for a transaction that changes the
// task, forShare for one that adds a run to it (a concurrent delete waits
// for the run, and the run never lands in a task deleted meanwhile).
const (
	noLock    = ""
	forUpdate = " FOR UPDATE"
	forShare  = " FOR SHARE"
)

// taskRow finds a live task of the project and returns its rowid, taking
// the row lock lock.
func taskRow(ctx context.Context, q querier, project int64, id string, lock string) (*store.Task, int64, error) {
	sql := "SELECT " + taskColumns + " FROM tasks t WHERE t.id = $1 AND t.project_id = $2 AND NOT t.deleted" + lock
	t, rowid, err := scanTask(q.QueryRow(ctx, sql, id, project))
	if err != nil {
		return nil, 0, notFound(err, "get task")
	}
	return t, rowid, nil
}

// latestRun fills t.LatestRun with the task's newest run, if any.
func latestRun(ctx context.Context, q querier, t *store.Task, rowid int64) error {
	r, err := scanRun(q.QueryRow(ctx, "SELECT "+runColumns+runFrom+"WHERE r.task_rowid = $1 ORDER BY r.rid DESC LIMIT 1", rowid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("latest run: %w", classify(err))
	}
	t.LatestRun = &r.Run
	return nil
}

// GetTask returns a live task of the project, with its latest run.
func (s *Store) GetTask(ctx context.Context, project int64, id string) (*store.Task, error) {
	t, rowid, err := taskRow(ctx, s.pool, project, id, noLock)
	if err != nil {
		return nil, err
	}
	if err := latestRun(ctx, s.pool, t, rowid); err != nil {
		return nil, err
	}
	return t, nil
}

// ListTasks returns the page of the project's live tasks that q selects,
// and how many match in all, from one snapshot.
func (s *Store) ListTasks(ctx context.Context, project int64, q store.TaskQuery) ([]store.Task, int64, error) {
	ord, ok := q.OrderOf()
	if !ok {
		return nil, 0, fmt.Errorf("list tasks: unknown ordering %q", q.Ordering)
	}
	where, args := taskFilter(project, q)
	tx, err := s.begin(ctx, pgxReadSnapshot)
	if err != nil {
		return nil, 0, fmt.Errorf("begin read: %w", classify(err))
	}
	defer rollback(ctx, tx)
	var total int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM tasks t WHERE "+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count tasks: %w", classify(err))
	}
	col := "t." + ord.Column
	if ord.Column == "title" {
		col += ` COLLATE "C"` // byte order, as SQLite's: the backends list alike
	}
	dir := " ASC"
	if ord.Desc {
		dir = " DESC"
	}
	n := len(args)
	rows, err := tx.Query(ctx, "SELECT "+taskColumns+" FROM tasks t WHERE "+where+
		fmt.Sprintf(" ORDER BY %s%s, t.seq DESC LIMIT $%d OFFSET $%d", col, dir, n+1, n+2), append(args, q.Limit, q.Offset)...)
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", classify(err))
	}
	var out []store.Task
	var rowids []int64
	for rows.Next() {
		t, rowid, err := scanTask(rows)
		if err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("scan task: %w", err)
		}
		out = append(out, *t)
		rowids = append(rowids, rowid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", classify(err))
	}
	for i := range out {
		if err := latestRun(ctx, tx, &out[i], rowids[i]); err != nil {
			return nil, 0, err
		}
	}
	return out, total, nil
}

// taskFilter is the WHERE clause of q over tasks t and its arguments
// ($1, $2, ...). repository and created_by are served by their indexes
// (migration 0005); the latest run's status by runs_by_task, one probe
// per task.
func taskFilter(project int64, q store.TaskQuery) (string, []any) {
	var b strings.Builder
	args := []any{project}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	b.WriteString("t.project_id = $1 AND NOT t.deleted")
	if q.Repository != nil {
		b.WriteString(" AND t.repository = " + arg(*q.Repository))
	}
	if q.OriginProduct != nil {
		b.WriteString(" AND t.origin_product = " + arg(*q.OriginProduct))
	}
	if q.CreatedBy != nil {
		b.WriteString(" AND t.created_by = " + arg(*q.CreatedBy))
	}
	if q.Status != nil {
		b.WriteString(" AND (SELECT r.status FROM runs r WHERE r.task_rowid = t.seq ORDER BY r.rid DESC LIMIT 1) = " + arg(*q.Status))
	}
	if q.Search != "" {
		// strpos, not LIKE: the text is matched as it is, % and _ included.
		p := arg(q.Search)
		b.WriteString(" AND (strpos(lower(t.title), lower(" + p + ")) > 0 OR strpos(lower(t.description), lower(" + p + ")) > 0)")
	}
	if q.Archived != nil {
		b.WriteString(" AND t.archived = " + arg(*q.Archived))
	}
	if q.Internal != nil {
		b.WriteString(" AND t.internal = " + arg(*q.Internal))
	}
	if q.IDs != nil {
		b.WriteString(" AND t.id = ANY(" + arg(q.IDs) + ")")
	}
	return b.String(), args
}

// UpdateTask applies a PATCH to a live task, under the task's row lock so
// that concurrent PATCHes of other fields are not lost.
func (s *Store) UpdateTask(ctx context.Context, project int64, id string, p store.TaskPatch) (*store.Task, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer rollback(ctx, tx)
	t, rowid, err := taskRow(ctx, tx, project, id, forUpdate)
	if err != nil {
		return nil, err
	}
	if p.Title != nil {
		t.Title = *p.Title
	}
	if p.Description != nil {
		t.Description = *p.Description
	}
	if p.OriginProduct != nil {
		t.OriginProduct = *p.OriginProduct
	}
	if p.Repository != nil {
		t.Repository = *p.Repository
	}
	if p.JSONSchema != nil {
		t.JSONSchema = *p.JSONSchema
	}
	if p.Internal != nil {
		t.Internal = *p.Internal
	}
	t.UpdatedAt = s.clock()
	store.ApplyArchived(t, p.Archived, t.UpdatedAt)
	var archivedAt *int64
	if t.ArchivedAt != nil {
		at := micros(*t.ArchivedAt)
		archivedAt = &at
	}
	if _, err := tx.Exec(ctx, "UPDATE tasks SET title = $1, description = $2, origin_product = $3, repository = $4, json_schema = $5, internal = $6, archived = $7, archived_at = $8, updated_at = $9 WHERE seq = $10",
		t.Title, t.Description, t.OriginProduct, t.Repository, schemaText(t), t.Internal, t.Archived, archivedAt, micros(t.UpdatedAt), rowid); err != nil {
		return nil, fmt.Errorf("update task: %w", classify(err))
	}
	if err := latestRun(ctx, tx, t, rowid); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit task: %w", classify(err))
	}
	return t, nil
}

// DeleteTask soft-deletes a live task; its runs become unreachable.
func (s *Store) DeleteTask(ctx context.Context, project int64, id string) error {
	tag, err := s.pool.Exec(ctx, "UPDATE tasks SET deleted = true, updated_at = $1 WHERE id = $2 AND project_id = $3 AND NOT deleted", micros(s.clock()), id, project)
	if err != nil {
		return fmt.Errorf("delete task: %w", classify(err))
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}
