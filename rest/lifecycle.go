package rest

import (
	"errors"
	"net/http"

	"runhub/store"
	"runhub/store/runs"
)

// The run lifecycle endpoints PostHog's clients call: start, cancel and
// resume_in_cloud.

// startRun serves POST .../runs/{id}/start/: a not_started run becomes
// queued, its first user message (if any) queued for the agent in the same
// store transaction (runs.StartRun); the answer is the task with
// latest_run, as PostHog's.
func (s *Server) startRun(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	sb, err := runs.DecodeStart(body)
	if err != nil {
		return err
	}
	if _, err := s.runs.StartRun(r.Context(), ref, sb); errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	} else if err != nil {
		return err
	}
	t, err := s.store.GetTask(r.Context(), ref.ProjectID, ref.TaskID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderTask(t, s.logLink(r)))
	return nil
}

// cancelRun serves POST .../runs/{id}/cancel/, idempotent: a finished run
// is answered as it is (200); a run whose agent is connected (on any node)
// has it asked to stop and is answered 202, the run becoming cancelled
// when the agent has left; any other run is cancelled at once (200).
func (s *Server) cancelRun(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	if _, err := readBody(r); err != nil {
		return err
	}
	if store.IsTerminal(run.Status) {
		writeJSON(w, http.StatusOK, renderRun(run, s.logLink(r)))
		return nil
	}
	stopping, err := s.commands.StopRun(r.Context(), run)
	if err != nil {
		return err
	}
	if stopping {
		writeJSON(w, http.StatusAccepted, renderRun(run, s.logLink(r)))
		return nil
	}
	ref := run.Ref()
	run, err = s.runs.CancelNow(r.Context(), ref)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderRun(run, s.logLink(r)))
	return nil
}

// resumeInCloud serves POST .../runs/{id}/resume_in_cloud/: a new run (201)
// continuing this one; the body, if any, is ignored, as PostHog's.
func (s *Server) resumeInCloud(w http.ResponseWriter, r *http.Request) error {
	prev, err := s.runOf(r)
	if err != nil {
		return err
	}
	if _, err := readBody(r); err != nil {
		return err
	}
	run, err := s.runs.ResumeInCloud(r.Context(), prev)
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound // the task was deleted meanwhile
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, renderRun(run, s.logLink(r)))
	return nil
}
