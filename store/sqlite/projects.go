package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"runhub/store"
)

// CreateProject inserts a project and returns it with its new id.
func (s *Store) CreateProject(ctx context.Context, name string) (*store.Project, error) {
	now := s.clock()
	res, err := s.w.ExecContext(ctx, "INSERT INTO projects (name, created_at) VALUES (?, ?)", name, micros(now))
	if err != nil {
		return nil, fmt.Errorf("insert project: %w", classify(err))
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, fmt.Errorf("project id: %w", classify(err))
	}
	return &store.Project{ID: id, Name: name, CreatedAt: now, SlackChannels: []string{}}, nil
}

// Bootstrap creates the first project and key when there is none. The
// writer's transactions take SQLite's write lock at BEGIN (_txlock
// immediate), so processes sharing the file bootstrap one at a time.
func (s *Store) Bootstrap(ctx context.Context, name string, k store.NewAPIKey) (bool, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("bootstrap: %w", classify(err))
	}
	defer tx.Rollback()
	var n int64
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM projects").Scan(&n); err != nil {
		return false, fmt.Errorf("bootstrap: count projects: %w", classify(err))
	}
	if n > 0 {
		return false, nil
	}
	now := micros(s.clock())
	if _, err := tx.ExecContext(ctx, "INSERT INTO projects (name, created_at) VALUES (?, ?)", name, now); err != nil {
		return false, fmt.Errorf("bootstrap project: %w", classify(err))
	}
	if k.Projects == nil {
		k.Projects = []int64{}
	}
	scopes, _ := json.Marshal(k.Scopes)
	projects, _ := json.Marshal(k.Projects)
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO api_keys (label, prefix, hash, scopes, all_projects, projects, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		k.Label, k.Prefix, k.Hash, string(scopes), k.AllProjects, string(projects), now); err != nil {
		return false, fmt.Errorf("bootstrap key: %w", classify(err))
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("bootstrap: commit: %w", classify(err))
	}
	return true, nil
}

const projectColumns = "id, name, created_at, slack_channels"

func scanProject(sc interface{ Scan(...any) error }) (*store.Project, error) {
	var p store.Project
	var created int64
	var channels string
	if err := sc.Scan(&p.ID, &p.Name, &created, &channels); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(channels), &p.SlackChannels); err != nil {
		return nil, fmt.Errorf("decode project slack channels: %w", err)
	}
	if p.SlackChannels == nil {
		p.SlackChannels = []string{}
	}
	p.CreatedAt = fromMicros(created)
	return &p, nil
}

// GetProject returns one project or store.ErrNotFound.
func (s *Store) GetProject(ctx context.Context, id int64) (*store.Project, error) {
	p, err := scanProject(s.r.QueryRowContext(ctx, "SELECT "+projectColumns+" FROM projects WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get project: %w", classify(err))
	}
	return p, nil
}

// ListProjects returns every project, oldest first.
func (s *Store) ListProjects(ctx context.Context) ([]store.Project, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT "+projectColumns+" FROM projects ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list projects: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Project
	for rows.Next() {
		p, err := scanProject(rows)
		if err != nil {
			return nil, fmt.Errorf("scan project: %w", classify(err))
		}
		out = append(out, *p)
	}
	return out, rows.Err()
}

// SetProjectSlackChannels replaces the project's Slack channel allow-list.
func (s *Store) SetProjectSlackChannels(ctx context.Context, id int64, channels []string) (*store.Project, error) {
	if channels == nil {
		channels = []string{}
	}
	b, err := json.Marshal(channels)
	if err != nil {
		return nil, fmt.Errorf("encode slack channels: %w", err)
	}
	p, err := scanProject(s.w.QueryRowContext(ctx,
		"UPDATE projects SET slack_channels = ? WHERE id = ? RETURNING "+projectColumns, string(b), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("set project slack channels: %w", classify(err))
	}
	return p, nil
}

// CreateAPIKey stores a key (its hash only).
func (s *Store) CreateAPIKey(ctx context.Context, k store.NewAPIKey) (*store.APIKey, error) {
	now := s.clock()
	if k.Projects == nil {
		k.Projects = []int64{}
	}
	scopes, _ := json.Marshal(k.Scopes)
	projects, _ := json.Marshal(k.Projects)
	res, err := s.w.ExecContext(ctx,
		"INSERT INTO api_keys (label, prefix, hash, scopes, all_projects, projects, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		k.Label, k.Prefix, k.Hash, string(scopes), k.AllProjects, string(projects), micros(now))
	if err != nil {
		return nil, fmt.Errorf("insert api key: %w", classify(err))
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, fmt.Errorf("api key id: %w", classify(err))
	}
	return &store.APIKey{ID: id, Label: k.Label, Prefix: k.Prefix, Scopes: k.Scopes, AllProjects: k.AllProjects,
		Projects: k.Projects, CreatedAt: now}, nil
}

const keyColumns = "id, label, prefix, scopes, all_projects, projects, created_at, revoked_at"

func scanKey(sc interface{ Scan(...any) error }) (*store.APIKey, error) {
	var k store.APIKey
	var scopes, projects string
	var created int64
	var revoked sql.NullInt64
	if err := sc.Scan(&k.ID, &k.Label, &k.Prefix, &scopes, &k.AllProjects, &projects, &created, &revoked); err != nil {
		return nil, err
	}
	if err := store.DecodeKeyColumns(&k, scopes, projects); err != nil {
		return nil, err
	}
	k.CreatedAt = fromMicros(created)
	k.RevokedAt = nullMicros(revoked)
	return &k, nil
}

// APIKeyByHash returns the unrevoked key with that hash.
func (s *Store) APIKeyByHash(ctx context.Context, hash []byte) (*store.APIKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, "SELECT "+keyColumns+" FROM api_keys WHERE hash = ? AND revoked_at IS NULL", hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get api key: %w", classify(err))
	}
	return k, nil
}

// ListAPIKeys returns every key (revoked ones too), oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]store.APIKey, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT "+keyColumns+" FROM api_keys ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", classify(err))
	}
	defer rows.Close()
	var out []store.APIKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("scan api key: %w", classify(err))
		}
		out = append(out, *k)
	}
	return out, rows.Err()
}

// RevokeAPIKey marks a key revoked; revoking twice is not an error.
func (s *Store) RevokeAPIKey(ctx context.Context, id int64) error {
	res, err := s.w.ExecContext(ctx, "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", micros(s.clock()), id)
	if err != nil {
		return fmt.Errorf("revoke api key: %w", classify(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return store.ErrNotFound
	}
	return nil
}

// RevocationMark counts the revoked keys and finds the newest revocation.
// It scans api_keys, a table of operator-created keys that stays small, so
// it needs no index.
func (s *Store) RevocationMark(ctx context.Context) (store.RevocationMark, error) {
	var m store.RevocationMark
	var newest int64
	err := s.r.QueryRowContext(ctx, "SELECT COUNT(revoked_at), COALESCE(MAX(revoked_at), 0) FROM api_keys").Scan(&m.Count, &newest)
	if err != nil {
		return m, fmt.Errorf("revocation mark: %w", classify(err))
	}
	if m.Count > 0 {
		m.Newest = fromMicros(newest)
	}
	return m, nil
}

// RevokedAPIKeyIDs returns the ids of the revoked keys, ascending.
func (s *Store) RevokedAPIKeyIDs(ctx context.Context) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT id FROM api_keys WHERE revoked_at IS NOT NULL ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("revoked api keys: %w", classify(err))
	}
	defer rows.Close()
	ids := []int64{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("scan revoked api key: %w", classify(err))
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("revoked api keys: %w", classify(err))
	}
	return ids, nil
}
