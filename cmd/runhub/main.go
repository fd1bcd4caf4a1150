// Command runhub serves the task-runs API, the live hub and the sandbox
// proxy, manages projects and API keys, and runs the reference agent.
//
//	runhub [serve] [--addr :8080] [--data-dir ./data] [--database-url postgres://...]
//	runhub migrate-store --from DATA_DIR --to postgres://...
//	runhub keys create --project 1 --scopes task:read,task:write [--label L]
//	runhub keys list | keys revoke ID
//	runhub projects create NAME | projects list
//	runhub projects update ID --slack-channels C1,C2
//	runhub agent --url WS_URL --token AGENT_TOKEN
//
// Every flag has a RUNHUB_* environment variable. The keys and projects
// commands open the same store as serve (the SQLite file of the data
// directory, or --database-url) and work while the server runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "runhub:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "runhub:", err)
		os.Exit(1)
	}
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, stderr)
	case "keys":
		return keysCmd(ctx, args, stdout)
	case "projects":
		return projectsCmd(ctx, args, stdout)
	case "agent":
		return agentCmd(ctx, args, stderr)
	case "migrate-store":
		return migrateStoreCmd(ctx, args, stdout)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q\n%s", cmd, usage)}
}

const usage = `usage:
  runhub [serve] [--addr :8080] [--data-dir ./data] [--database-url postgres://...]
  runhub migrate-store --from DATA_DIR --to postgres://...   (copy an embedded install into PostgreSQL)
  runhub keys create --project 1[,2|*] --scopes task:read,task:write [--label NAME]
  runhub keys list
  runhub keys revoke ID
  runhub projects create NAME
  runhub projects list
  runhub projects update ID --slack-channels C1,C2   ("" clears: the project posts to no Slack channel)
  runhub agent --url WS_URL --token AGENT_TOKEN   (the reference sandbox agent)
`

// newFlags is a FlagSet that reports errors instead of exiting.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses args allowing flags before and after positional
// arguments (`keys revoke 2 --data-dir d`), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
