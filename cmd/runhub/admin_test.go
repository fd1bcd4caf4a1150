package main

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestProjectsSlackChannels: projects update --slack-channels sets the
// project's allow-list (stored, shown by projects list), "" clears it, and
// bad ids, unknown projects and a missing flag are refused without change.
func TestProjectsSlackChannels(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cli := func(args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		err := run(ctx, append(args, "--data-dir", dir), &out, &out)
		return out.String(), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := cli(args...)
		if err != nil {
			t.Fatalf("runhub %v: %v", args, err)
		}
		return out
	}
	stored := func() []string {
		t.Helper()
		st, err := openStore(ctx, dir, "")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		p, err := st.GetProject(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		return p.SlackChannels
	}
	listed := func() string {
		t.Helper()
		for _, line := range strings.Split(must("projects", "list"), "\n") {
			if f := strings.Fields(line); len(f) == 4 && f[0] == "1" {
				return f[3]
			}
		}
		t.Fatal("projects list has no row for project 1 with four columns")
		return ""
	}

	must("projects", "create", "Acme")
	if got := listed(); got != "-" {
		t.Fatalf("new project lists channels %q, want -", got)
	}
	must("projects", "update", "1", "--slack-channels", "C024BE91L, G1,C024BE91L")
	if got := stored(); !slices.Equal(got, []string{"C024BE91L", "G1"}) {
		t.Fatalf("stored %v, want [C024BE91L G1]", got)
	}
	if got := listed(); got != "C024BE91L,G1" {
		t.Fatalf("projects list shows %q", got)
	}

	for _, bad := range [][]string{
		{"projects", "update", "1"},                               // nothing to change
		{"projects", "update", "1", "--slack-channels", "C1,,C2"}, // empty id
		{"projects", "update", "1", "--slack-channels", "#general"},
		{"projects", "update", "1", "--slack-channels", "c1"},
		{"projects", "update", "1", "--slack-channels", strings.Repeat("C", maxSlackChannelID+1)},
		{"projects", "update", "x", "--slack-channels", "C1"},
		{"projects", "update", "--slack-channels", "C1"},
	} {
		if _, err := cli(bad...); !errors.As(err, new(usageError)) {
			t.Errorf("runhub %v: err %v, want a usage error", bad, err)
		}
	}
	if _, err := cli("projects", "update", "7", "--slack-channels", "C1"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown project: err %v, want not found", err)
	}
	if got := stored(); !slices.Equal(got, []string{"C024BE91L", "G1"}) {
		t.Fatalf("refused updates changed the list to %v", got)
	}

	must("projects", "update", "1", "--slack-channels", "")
	if got := stored(); len(got) != 0 {
		t.Fatalf("after clearing: %v", got)
	}
	if got := listed(); got != "-" {
		t.Fatalf("cleared project lists %q, want -", got)
	}
}
