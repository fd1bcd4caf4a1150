package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/signal"
	"strings"
	"syscall"

	"runhub/proxy/agentclient"
)

// agentCmd runs the reference sandbox agent: runhub agent --url WS_URL
// --token AGENT_TOKEN (from GET .../connection_token?role=agent), or
// runhub agent --api http://HOST --key API_KEY --run RUN_PATH, which asks
// for the token itself.
func agentCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("agent")
	url := fs.String("url", env("RUNHUB_AGENT_URL", ""), "the agent endpoint (ws_url of an agent token)")
	token := fs.String("token", env("RUNHUB_AGENT_TOKEN", ""), "agent token for the run")
	api := fs.String("api", "", "runhub base URL, to fetch the agent token with --key and --run")
	key := fs.String("key", env("RUNHUB_API_KEY", ""), "API key with task:write (with --api)")
	run := fs.String("run", "", "the run's API path, /api/projects/P/tasks/T/runs/R (with --api)")
	if rest, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(rest) > 0 {
		return usageError{"agent: unexpected argument " + rest[0]}
	}
	if (*url == "" || *token == "") && *api != "" && *key != "" && *run != "" {
		var err error
		if *url, *token, err = fetchAgentToken(ctx, *api, *key, *run); err != nil {
			return err
		}
	}
	if *url == "" || *token == "" {
		return usageError{"agent: give --url and --token (GET .../connection_token?role=agent), or --api, --key and --run"}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, nil))
	err := agentclient.New(agentclient.Options{URL: *url, Token: *token, Logger: log}).Run(ctx)
	if err == nil || errors.Is(err, context.Canceled) {
		log.Info("agent closed")
		return nil
	}
	return err
}

// fetchAgentToken asks runhub for an agent token of the run.
func fetchAgentToken(ctx context.Context, api, key, run string) (url, token string, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(api, "/")+strings.TrimSuffix(run, "/")+"/connection_token/?role=agent", nil)
	if err != nil {
		return "", "", usageError{"agent: bad --api or --run: " + err.Error()}
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", fmt.Errorf("agent token: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("agent token: %d %s", resp.StatusCode, b)
	}
	var t struct {
		Token string `json:"token"`
		URL   string `json:"ws_url"`
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return "", "", fmt.Errorf("agent token: %w", err)
	}
	return t.URL, t.Token, nil
}
