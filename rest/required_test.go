package rest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"runhub/store/sqlite"
)

// fullConfig is a complete server config on a fresh SQLite store.
func fullConfig(t testing.TB) Config {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := Config{Store: st}
	withDeps(t, &c)
	return c
}

// TestConfigRequired: every dependency of a server is required; New
// refuses a config without one, naming it, instead of serving a stub.
func TestConfigRequired(t *testing.T) {
	full := fullConfig(t)
	for _, c := range []struct {
		field string
		drop  func(*Config)
	}{
		{"Store", func(c *Config) { c.Store = nil }},
		{"Runs", func(c *Config) { c.Runs = nil }},
		{"Stream", func(c *Config) { c.Stream = nil }},
		{"Tokens", func(c *Config) { c.Tokens = nil }},
		{"Commands", func(c *Config) { c.Commands = nil }},
		{"Blobs", func(c *Config) { c.Blobs = nil }},
		{"Signer", func(c *Config) { c.Signer = nil }},
		{"Files", func(c *Config) { c.Files = nil }}, // a filesystem store serves its own downloads
	} {
		cfg := full
		c.drop(&cfg)
		want := fmt.Sprintf("rest: Config.%s is required", c.field)
		func() {
			defer func() {
				if r := recover(); fmt.Sprint(r) != want {
					t.Errorf("New without %s: panic %v, want %q", c.field, r, want)
				}
			}()
			New(cfg)
		}()
	}
	New(full) // complete: no panic
}
