package rest

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/google/uuid"

	"runhub/store"
	"runhub/store/runs"
)

// Relayer queues messages for a run's Slack thread (slack.Relay).
type Relayer interface {
	Configured() bool
	Enqueue(ctx context.Context, id, runID, channel, threadTS, markdown string) error
}

var errRelayOff = &handlerError{Status: http.StatusServiceUnavailable, Msg: "Slack relay is not configured"}

// errSlackChannel refuses a relay to a channel the run's project was not
// allowed by its operator (runhub projects update --slack-channels).
var errSlackChannel = &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
	Detail: "This project may not post to the run's Slack channel; the operator allows channels with runhub projects update --slack-channels."}

// slackThread is state.slack_thread.
type slackThread struct {
	Channel  string `json:"channel"`
	ThreadTS string `json:"thread_ts"`
}

// relayMessage serves POST .../relay_message. After the skip rules, the
// thread's channel must be in the project's Slack allow-list (else 403
// permission_denied, nothing stored or posted).
func (s *Server) relayMessage(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	text, err := runs.DecodeRelay(body)
	if err != nil {
		return err
	}
	var th slackThread
	if raw, ok := run.State["slack_thread"]; ok {
		json.Unmarshal(raw, &th)
	}
	if store.IsTerminal(run.Status) || strings.TrimSpace(text) == "" || th.Channel == "" || th.ThreadTS == "" {
		writeJSON(w, http.StatusOK, map[string]string{"status": "skipped"})
		return nil
	}
	// state.slack_thread is written by any key with task:write, so the
	// channel it names is checked against the operator's allow-list before
	// anything reaches the outbox. A project with no allowed channel posts
	// nowhere.
	project, err := s.store.GetProject(r.Context(), run.ProjectID)
	if err != nil {
		return err
	}
	if !project.AllowsSlackChannel(th.Channel) {
		s.log.WarnContext(r.Context(), "relay refused: slack channel not allowed for the project",
			"run_id", run.ID, "project", run.ProjectID, "channel", th.Channel)
		return errSlackChannel
	}
	if s.relay == nil || !s.relay.Configured() {
		return errRelayOff
	}
	id := uuid.NewString()
	if err := s.relay.Enqueue(r.Context(), id, run.ID, th.Channel, th.ThreadTS, text); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "accepted", "relay_id": id})
	return nil
}
