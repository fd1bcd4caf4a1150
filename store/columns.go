package store

import (
	"encoding/json"
	"fmt"
)

// The JSON columns every backend stores as the same text; decoding them is
// one rule, whatever the SQL that read them.

// DecodeRunColumns fills a run's output (nil: none), state and artifacts
// from their stored JSON text; state and artifacts are never nil after.
func DecodeRunColumns(r *Run, output *string, state, artifacts string) error {
	if output != nil {
		if err := json.Unmarshal([]byte(*output), &r.Output); err != nil {
			return fmt.Errorf("decode run output: %w", err)
		}
	}
	if err := json.Unmarshal([]byte(state), &r.State); err != nil {
		return fmt.Errorf("decode run state: %w", err)
	}
	if r.State == nil {
		r.State = map[string]json.RawMessage{}
	}
	if err := json.Unmarshal([]byte(artifacts), &r.Artifacts); err != nil {
		return fmt.Errorf("decode run artifacts: %w", err)
	}
	if r.Artifacts == nil {
		r.Artifacts = []json.RawMessage{}
	}
	return nil
}

// DecodeKeyColumns fills a key's scopes and projects from their stored
// JSON arrays.
func DecodeKeyColumns(k *APIKey, scopes, projects string) error {
	if err := json.Unmarshal([]byte(scopes), &k.Scopes); err != nil {
		return fmt.Errorf("decode key scopes: %w", err)
	}
	if err := json.Unmarshal([]byte(projects), &k.Projects); err != nil {
		return fmt.Errorf("decode key projects: %w", err)
	}
	return nil
}
