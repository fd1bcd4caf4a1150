package rest

import (
	"context"
	"encoding/json"
	"net/http"

	"runhub/proxy"
	"runhub/store"
	"runhub/store/runs"
)

// Commander relays a command to a run's agent (proxy.Proxy).
type Commander interface {
	Command(ctx context.Context, run *store.Run, method string, params json.RawMessage, id any) (*proxy.Response, error)
	// StopRun asks the run's agent, wherever it is connected, to stop;
	// stopping is false when no agent is connected (the caller cancels
	// the run itself). See proxy.Proxy.StopRun.
	StopRun(ctx context.Context, run *store.Run) (stopping bool, err error)
}

// command serves POST .../command: the agent's JSON-RPC response with 200.
func (s *Server) command(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	method, params, id, err := runs.DecodeCommand(body)
	if err != nil {
		return err
	}
	resp, err := s.commands.Command(r.Context(), run, method, params, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
