package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"runhub/proxy"
)

// agentCmd runs the reference sandbox agent: runhub agent --url WS_URL
// --token AGENT_TOKEN (from GET .../connection_token?role=agent).
func agentCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("agent")
	url := fs.String("url", env("RUNHUB_AGENT_URL", ""), "the agent endpoint (ws_url of an agent token)")
	token := fs.String("token", env("RUNHUB_AGENT_TOKEN", ""), "agent token for the run")
	if rest, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return usageError{"agent: unexpected argument " + rest[0]}
	}
	if *url == "" || *token == "" {
		return usageError{"agent: --url and --token are required (GET .../connection_token?role=agent gives both)"}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	err := proxy.NewAgent(proxy.AgentOptions{URL: *url, Token: *token, Logger: log}).Run(ctx)
	if err == nil || errors.Is(err, context.Canceled) {
		log.Info("agent closed")
		return nil
	}
	return err
}
