package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"runhub/store"
	"runhub/store/postgres"
	"runhub/store/sqlite"
)

// openStore opens the store a command works on: the PostgreSQL database
// at databaseURL when one is given (with opts), else the SQLite file of
// the data directory (which leases no Slack relays).
func openStore(ctx context.Context, dataDir, databaseURL string, opts ...postgres.Option) (store.Store, error) {
	var st store.Store
	var err error
	if databaseURL != "" {
		st, err = postgres.Open(ctx, databaseURL, opts...)
	} else {
		st, err = sqlite.Open(ctx, dbPath(dataDir))
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return st, nil
}

// databaseURLFlag is shared by every command that opens the store.
func databaseURLFlag(fs *flag.FlagSet) *string {
	return fs.String("database-url", env("RUNHUB_DATABASE_URL", ""), "PostgreSQL URL (postgres://...); empty: SQLite in the data directory")
}

func keysCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"keys: want create, list or revoke\n" + usage}
	}
	sub, args := args[0], args[1:]
	fs := newFlags("keys " + sub)
	dataDir := fs.String("data-dir", dataDirFlag("./data"), "data directory")
	dbURL := databaseURLFlag(fs)
	projects := fs.String("project", "", "project ids, comma-separated, or * for all")
	scopes := fs.String("scopes", store.ScopeRead+","+store.ScopeWrite, "task:read, task:write or *")
	label := fs.String("label", "", "a name to recognise the key by")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		nk, err := keySpec(*projects, *scopes, *label)
		if err != nil {
			return err
		}
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, p := range nk.Projects {
			if _, err := st.GetProject(ctx, p); err != nil {
				return fmt.Errorf("project %d: %w", p, err)
			}
		}
		secret, prefix, hash := store.GenerateAPIKey()
		nk.Prefix, nk.Hash = prefix, hash
		if _, err := st.CreateAPIKey(ctx, nk); err != nil {
			return err
		}
		fmt.Fprintln(stdout, secret)
		return nil
	case "list":
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		keys, err := st.ListAPIKeys(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPREFIX\tLABEL\tSCOPES\tPROJECTS\tCREATED\tREVOKED")
		for _, k := range keys {
			projects := "*"
			if !k.AllProjects {
				projects = joinInts(k.Projects)
			}
			revoked := "-"
			if k.RevokedAt != nil {
				revoked = store.FormatTime(*k.RevokedAt)
			}
			fmt.Fprintf(tw, "%d\t%s…\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, k.Label, strings.Join(k.Scopes, ","), projects,
				store.FormatTime(k.CreatedAt), revoked)
		}
		return tw.Flush()
	case "revoke":
		if len(pos) != 1 {
			return usageError{"keys revoke: want one key id"}
		}
		id, err := strconv.ParseInt(pos[0], 10, 64)
		if err != nil {
			return usageError{"keys revoke: the key id is a number (see keys list)"}
		}
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.RevokeAPIKey(ctx, id); err != nil {
			return fmt.Errorf("revoke key %d: %w", id, err)
		}
		return nil
	}
	return usageError{fmt.Sprintf("keys: unknown subcommand %q", sub)}
}

// keySpec validates the flags of keys create.
func keySpec(projects, scopes, label string) (store.NewAPIKey, error) {
	nk := store.NewAPIKey{Label: label}
	if projects == "" {
		return nk, usageError{"keys create: --project is required (ids, comma-separated, or *)"}
	}
	if projects == "*" {
		nk.AllProjects = true
	} else {
		for _, p := range strings.Split(projects, ",") {
			id, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
			if err != nil || id <= 0 {
				return nk, usageError{fmt.Sprintf("keys create: bad project id %q", p)}
			}
			nk.Projects = append(nk.Projects, id)
		}
	}
	for _, s := range strings.Split(scopes, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case store.ScopeRead, store.ScopeWrite, store.ScopeAll:
			nk.Scopes = append(nk.Scopes, s)
		default:
			return nk, usageError{fmt.Sprintf("keys create: unknown scope %q (task:read, task:write or *)", s)}
		}
	}
	return nk, nil
}

func joinInts(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(parts, ",")
}

func projectsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"projects: want create, list or update\n" + usage}
	}
	sub, args := args[0], args[1:]
	fs := newFlags("projects " + sub)
	dataDir := fs.String("data-dir", dataDirFlag("./data"), "data directory")
	dbURL := databaseURLFlag(fs)
	var channels *string // nil: the flag was not given
	fs.Func("slack-channels", "Slack channel ids the project may post to, comma-separated (\"\" clears)", func(v string) error {
		channels = &v
		return nil
	})
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		if len(pos) != 1 || strings.TrimSpace(pos[0]) == "" {
			return usageError{"projects create: want a NAME"}
		}
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		p, err := st.CreateProject(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, p.ID)
		return nil
	case "list":
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		ps, err := st.ListProjects(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tCREATED\tSLACK_CHANNELS")
		for _, p := range ps {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.ID, p.Name, store.FormatTime(p.CreatedAt), slackChannelsText(p.SlackChannels))
		}
		return tw.Flush()
	case "update":
		if len(pos) != 1 {
			return usageError{"projects update: want one project id"}
		}
		id, err := strconv.ParseInt(pos[0], 10, 64)
		if err != nil || id <= 0 {
			return usageError{"projects update: the project id is a number (see projects list)"}
		}
		if channels == nil {
			return usageError{"projects update: nothing to change (--slack-channels C1,C2, or \"\" to clear)"}
		}
		list, err := parseSlackChannels(*channels)
		if err != nil {
			return err
		}
		st, err := openStore(ctx, *dataDir, *dbURL)
		if err != nil {
			return err
		}
		defer st.Close()
		p, err := st.SetProjectSlackChannels(ctx, id, list)
		if err != nil {
			return fmt.Errorf("project %d: %w", id, err)
		}
		fmt.Fprintf(stdout, "project %d slack channels: %s\n", p.ID, slackChannelsText(p.SlackChannels))
		return nil
	}
	return usageError{fmt.Sprintf("projects: unknown subcommand %q", sub)}
}

// maxSlackChannelID bounds one channel id: Slack's ids are about a dozen
// characters (C024BE91L); anything much longer is a mistake, not an id.
const maxSlackChannelID = 64

// parseSlackChannels parses --slack-channels: comma-separated Slack channel
// ids, each upper-case letters and digits as Slack writes them (the relay
// compares them exactly with state.slack_thread.channel), duplicates
// dropped. "" is the empty list, which allows no channel.
func parseSlackChannels(v string) ([]string, error) {
	out := []string{}
	if strings.TrimSpace(v) == "" {
		return out, nil
	}
	for _, c := range strings.Split(v, ",") {
		c = strings.TrimSpace(c)
		ok := c != "" && len(c) <= maxSlackChannelID
		for _, r := range c {
			ok = ok && (r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}
		if !ok {
			return nil, usageError{fmt.Sprintf("projects update: bad Slack channel id %q (ids such as C024BE91L, comma-separated)", c)}
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// slackChannelsText renders an allow-list for people; "-" is none.
func slackChannelsText(channels []string) string {
	if len(channels) == 0 {
		return "-"
	}
	return strings.Join(channels, ",")
}
