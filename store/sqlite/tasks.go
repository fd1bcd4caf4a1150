package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"runhub/store"
)

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const taskColumns = "t.seq, t.id, t.project_id, t.task_number, t.slug, t.title, t.description, t.origin_product, t.repository, t.json_schema, t.created_by, t.internal, t.archived, t.archived_at, t.created_at, t.updated_at"

func scanTask(sc interface{ Scan(...any) error }) (*store.Task, int64, error) {
	var t store.Task
	var rowid, created, updated int64
	var repo, schema sql.NullString
	var createdBy, archivedAt sql.NullInt64
	if err := sc.Scan(&rowid, &t.ID, &t.ProjectID, &t.Number, &t.Slug, &t.Title, &t.Description, &t.OriginProduct,
		&repo, &schema, &createdBy, &t.Internal, &t.Archived, &archivedAt, &created, &updated); err != nil {
		return nil, 0, err
	}
	if createdBy.Valid {
		t.CreatedBy = &createdBy.Int64
	}
	if archivedAt.Valid {
		at := fromMicros(archivedAt.Int64)
		t.ArchivedAt = &at
	}
	t.Repository = nullString(repo)
	if schema.Valid {
		t.JSONSchema = []byte(schema.String)
	}
	t.CreatedAt = fromMicros(created)
	t.UpdatedAt = fromMicros(updated)
	return &t, rowid, nil
}

// CreateTask inserts a task with the project's next task number.
func (s *Store) CreateTask(ctx context.Context, project int64, nt store.NewTask) (*store.Task, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer tx.Rollback()
	now := s.clock() // read while holding the writer, so time follows seq order
	var name string
	var number int64
	err = tx.QueryRowContext(ctx, "UPDATE projects SET next_task_number = next_task_number + 1 WHERE id = ? RETURNING name, next_task_number - 1", project).Scan(&name, &number)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("next task number: %w", classify(err))
	}
	t := &store.Task{
		ID: uuid.NewString(), ProjectID: project, Number: number, Slug: store.TaskSlug(name, number),
		Title: nt.Title, Description: nt.Description, OriginProduct: nt.OriginProduct, Repository: nt.Repository,
		JSONSchema: nt.JSONSchema, CreatedBy: nt.CreatedBy, Internal: nt.Internal, CreatedAt: now, UpdatedAt: now,
	}
	var schema any
	if t.JSONSchema != nil {
		schema = string(t.JSONSchema)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO tasks (id, project_id, task_number, slug, title, description, origin_product, repository, json_schema, created_by, internal, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, project, number, t.Slug, t.Title, t.Description, t.OriginProduct, t.Repository, schema, t.CreatedBy, t.Internal, micros(now), micros(now)); err != nil {
		return nil, fmt.Errorf("insert task: %w", classify(err))
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit task: %w", classify(err))
	}
	return t, nil
}

// taskRow finds a live task of the project and returns its rowid.
func taskRow(ctx context.Context, q querier, project int64, id string) (*store.Task, int64, error) {
	t, rowid, err := scanTask(q.QueryRowContext(ctx, "SELECT "+taskColumns+" FROM tasks t WHERE t.id = ? AND t.project_id = ? AND t.deleted = 0", id, project))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, store.ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get task: %w", classify(err))
	}
	return t, rowid, nil
}

// latestRun fills t.LatestRun with the task's newest run, if any.
func latestRun(ctx context.Context, q querier, t *store.Task, rowid int64) error {
	r, err := scanRun(q.QueryRowContext(ctx, "SELECT "+runColumns+runFrom+"WHERE r.task_rowid = ? ORDER BY r.rid DESC LIMIT 1", rowid))
	if errors.Is(err, sql.ErrNoRows) {
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
	t, rowid, err := taskRow(ctx, s.r, project, id)
	if err != nil {
		return nil, err
	}
	if err := latestRun(ctx, s.r, t, rowid); err != nil {
		return nil, err
	}
	return t, nil
}

// ListTasks returns the page of the project's live tasks that q selects,
// and how many match in all.
func (s *Store) ListTasks(ctx context.Context, project int64, q store.TaskQuery) ([]store.Task, int64, error) {
	ord, ok := q.OrderOf()
	if !ok {
		return nil, 0, fmt.Errorf("list tasks: unknown ordering %q", q.Ordering)
	}
	where, args := taskFilter(project, q)
	var total int64
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM tasks t WHERE "+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count tasks: %w", classify(err))
	}
	dir := " ASC"
	if ord.Desc {
		dir = " DESC"
	}
	rows, err := s.r.QueryContext(ctx, "SELECT "+taskColumns+" FROM tasks t WHERE "+where+
		" ORDER BY t."+ord.Column+dir+", t.seq DESC LIMIT ? OFFSET ?", append(args, q.Limit, q.Offset)...)
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", classify(err))
	}
	var out []store.Task
	var rowids []int64
	for rows.Next() {
		t, rowid, err := scanTask(rows)
		if err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("scan task: %w", classify(err))
		}
		out = append(out, *t)
		rowids = append(rowids, rowid)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list tasks: %w", classify(err))
	}
	for i := range out {
		if err := latestRun(ctx, s.r, &out[i], rowids[i]); err != nil {
			return nil, 0, err
		}
	}
	return out, total, nil
}

// taskFilter is the WHERE clause of q over tasks t and its arguments.
// repository and created_by are served by their indexes (migration 0006);
// the latest run's status by runs_by_task, one probe per task.
func taskFilter(project int64, q store.TaskQuery) (string, []any) {
	var b strings.Builder
	b.WriteString("t.project_id = ? AND t.deleted = 0")
	args := []any{project}
	if q.Repository != nil {
		b.WriteString(" AND t.repository = ?")
		args = append(args, *q.Repository)
	}
	if q.OriginProduct != nil {
		b.WriteString(" AND t.origin_product = ?")
		args = append(args, *q.OriginProduct)
	}
	if q.CreatedBy != nil {
		b.WriteString(" AND t.created_by = ?")
		args = append(args, *q.CreatedBy)
	}
	if q.Status != nil {
		b.WriteString(" AND (SELECT r.status FROM runs r WHERE r.task_rowid = t.seq ORDER BY r.rid DESC LIMIT 1) = ?")
		args = append(args, *q.Status)
	}
	if q.Search != "" {
		// instr, not LIKE: the text is matched as it is, % and _ included.
		b.WriteString(" AND (instr(lower(t.title), lower(?)) > 0 OR instr(lower(t.description), lower(?)) > 0)")
		args = append(args, q.Search, q.Search)
	}
	if q.Archived != nil {
		b.WriteString(" AND t.archived = ?")
		args = append(args, *q.Archived)
	}
	if q.Internal != nil {
		b.WriteString(" AND t.internal = ?")
		args = append(args, *q.Internal)
	}
	if q.IDs != nil {
		b.WriteString(" AND t.id IN (SELECT value FROM json_each(?))")
		ids, _ := json.Marshal(q.IDs) // a []string always encodes
		args = append(args, string(ids))
	}
	return b.String(), args
}

// UpdateTask applies a PATCH to a live task.
func (s *Store) UpdateTask(ctx context.Context, project int64, id string, p store.TaskPatch) (*store.Task, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", classify(err))
	}
	defer tx.Rollback()
	t, rowid, err := taskRow(ctx, tx, project, id)
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
	var archivedAt any
	if t.ArchivedAt != nil {
		archivedAt = micros(*t.ArchivedAt)
	}
	var schema any
	if t.JSONSchema != nil {
		schema = string(t.JSONSchema)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE tasks SET title = ?, description = ?, origin_product = ?, repository = ?, json_schema = ?, internal = ?, archived = ?, archived_at = ?, updated_at = ? WHERE seq = ?",
		t.Title, t.Description, t.OriginProduct, t.Repository, schema, t.Internal, t.Archived, archivedAt, micros(t.UpdatedAt), rowid); err != nil {
		return nil, fmt.Errorf("update task: %w", classify(err))
	}
	if err := latestRun(ctx, tx, t, rowid); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit task: %w", classify(err))
	}
	return t, nil
}

// DeleteTask soft-deletes a live task; its runs become unreachable.
func (s *Store) DeleteTask(ctx context.Context, project int64, id string) error {
	res, err := s.w.ExecContext(ctx, "UPDATE tasks SET deleted = 1, updated_at = ? WHERE id = ? AND project_id = ? AND deleted = 0", micros(s.clock()), id, project)
	if err != nil {
		return fmt.Errorf("delete task: %w", classify(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return store.ErrNotFound
	}
	return nil
}
