package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"runhub/store"
)

// CreateProject inserts a project and returns it with its new id.
func (s *Store) CreateProject(ctx context.Context, name string) (*store.Project, error) {
	now := s.clock()
	var id int64
	if err := s.pool.QueryRow(ctx, "INSERT INTO projects (name, created_at) VALUES ($1, $2) RETURNING id", name, micros(now)).Scan(&id); err != nil {
		return nil, fmt.Errorf("insert project: %w", classify(err))
	}
	return &store.Project{ID: id, Name: name, CreatedAt: now, SlackChannels: []string{}}, nil
}

// bootstrapLock is the advisory lock key under which nodes bootstrap an
// empty database one at a time ("rhboot").
const bootstrapLock = 0x7268626f6f74

// Bootstrap creates the first project and key when there is none, under a
// transaction-scoped advisory lock so that of nodes starting together on
// an empty database exactly one creates them.
func (s *Store) Bootstrap(ctx context.Context, name string, k store.NewAPIKey) (bool, error) {
	tx, err := s.begin(ctx, pgx.TxOptions{})
	if err != nil {
		return false, fmt.Errorf("bootstrap: %w", classify(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(bootstrapLock)); err != nil {
		return false, fmt.Errorf("bootstrap lock: %w", classify(err))
	}
	var n int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM projects").Scan(&n); err != nil {
		return false, fmt.Errorf("bootstrap: count projects: %w", classify(err))
	}
	if n > 0 {
		return false, nil
	}
	now := micros(s.clock())
	if _, err := tx.Exec(ctx, "INSERT INTO projects (name, created_at) VALUES ($1, $2)", name, now); err != nil {
		return false, fmt.Errorf("bootstrap project: %w", classify(err))
	}
	if k.Projects == nil {
		k.Projects = []int64{}
	}
	scopes, _ := json.Marshal(k.Scopes)
	projects, _ := json.Marshal(k.Projects)
	if _, err := tx.Exec(ctx,
		"INSERT INTO api_keys (label, prefix, hash, scopes, all_projects, projects, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
		k.Label, k.Prefix, k.Hash, string(scopes), k.AllProjects, string(projects), now); err != nil {
		return false, fmt.Errorf("bootstrap key: %w", classify(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("bootstrap: commit: %w", classify(err))
	}
	return true, nil
}

// Secret returns the named secret, storing generate's value first when
// there is none (ON CONFLICT DO NOTHING: of racing nodes one value wins,
// and every node reads it back).
func (s *Store) Secret(ctx context.Context, name string, generate func() ([]byte, error)) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM secrets WHERE name = $1", name).Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read secret %s: %w", name, classify(err))
	}
	nv, err := generate()
	if err != nil {
		return nil, fmt.Errorf("generate secret %s: %w", name, err)
	}
	if _, err := s.pool.Exec(ctx, "INSERT INTO secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
		name, nv, micros(s.clock())); err != nil {
		return nil, fmt.Errorf("store secret %s: %w", name, classify(err))
	}
	if err := s.pool.QueryRow(ctx, "SELECT value FROM secrets WHERE name = $1", name).Scan(&v); err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, classify(err))
	}
	return v, nil
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
	p, err := scanProject(s.pool.QueryRow(ctx, "SELECT "+projectColumns+" FROM projects WHERE id = $1", id))
	if err != nil {
		return nil, notFound(err, "get project")
	}
	return p, nil
}

// ListProjects returns every project, oldest first.
func (s *Store) ListProjects(ctx context.Context) ([]store.Project, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+projectColumns+" FROM projects ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list projects: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Project
	for rows.Next() {
		p, err := scanProject(rows)
		if err != nil {
			return nil, fmt.Errorf("scan project: %w", err)
		}
		out = append(out, *p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list projects: %w", classify(err))
	}
	return out, nil
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
	p, err := scanProject(s.pool.QueryRow(ctx,
		"UPDATE projects SET slack_channels = $1 WHERE id = $2 RETURNING "+projectColumns, string(b), id))
	if err != nil {
		return nil, notFound(err, "set project slack channels")
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
	var id int64
	err := s.pool.QueryRow(ctx,
		"INSERT INTO api_keys (label, prefix, hash, scopes, all_projects, projects, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
		k.Label, k.Prefix, k.Hash, string(scopes), k.AllProjects, string(projects), micros(now)).Scan(&id)
	if err != nil {
		return nil, fmt.Errorf("insert api key: %w", classify(err))
	}
	return &store.APIKey{ID: id, Label: k.Label, Prefix: k.Prefix, Scopes: k.Scopes, AllProjects: k.AllProjects,
		Projects: k.Projects, CreatedAt: now}, nil
}

const keyColumns = "id, label, prefix, scopes, all_projects, projects, created_at, revoked_at"

func scanKey(sc interface{ Scan(...any) error }) (*store.APIKey, error) {
	var k store.APIKey
	var scopes, projects string
	var created int64
	var revoked *int64
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
	k, err := scanKey(s.pool.QueryRow(ctx, "SELECT "+keyColumns+" FROM api_keys WHERE hash = $1 AND revoked_at IS NULL", hash))
	if err != nil {
		return nil, notFound(err, "get api key")
	}
	return k, nil
}

// ListAPIKeys returns every key (revoked ones too), oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]store.APIKey, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+keyColumns+" FROM api_keys ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", classify(err))
	}
	defer rows.Close()
	var out []store.APIKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("scan api key: %w", err)
		}
		out = append(out, *k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api keys: %w", classify(err))
	}
	return out, nil
}

// RevokeAPIKey marks a key revoked; revoking twice is not an error.
func (s *Store) RevokeAPIKey(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2", micros(s.clock()), id)
	if err != nil {
		return fmt.Errorf("revoke api key: %w", classify(err))
	}
	if tag.RowsAffected() == 0 {
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
	err := s.pool.QueryRow(ctx, "SELECT count(revoked_at), COALESCE(max(revoked_at), 0) FROM api_keys").Scan(&m.Count, &newest)
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
	rows, err := s.pool.Query(ctx, "SELECT id FROM api_keys WHERE revoked_at IS NOT NULL ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("revoked api keys: %w", classify(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("revoked api keys: %w", classify(err))
	}
	if ids == nil {
		ids = []int64{}
	}
	return ids, nil
}
