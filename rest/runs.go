package rest

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"

	"runhub/store"
	"runhub/store/runs"
)

// idempotency returns the request's Idempotency-Key, if any, bound to a
// digest of what it asks (method, path, body) so a reused key with another
// request is refused rather than answered with an unrelated response. The
// key lives in the REST namespace: a client's "agent-batch:3" is not an
// agent's batch 3.
func idempotency(r *http.Request, body []byte) *store.Idempotency {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return nil
	}
	h := sha256.New()
	h.Write([]byte(r.Method + " " + strings.TrimSuffix(r.URL.Path, "/") + "\n"))
	h.Write(body)
	return &store.Idempotency{Namespace: store.IdemREST, Key: key, RequestHash: h.Sum(nil)}
}

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request) error {
	task, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	p := parsePage(r)
	rs, total, err := s.store.ListRuns(r.Context(), projectOf(r), task, p.limit, p.offset)
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, listBody(r, p, total, renderRuns(rs, s.logLink(r))))
	return nil
}

func (s *Server) createRun(w http.ResponseWriter, r *http.Request) error {
	task, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	nr, err := runs.DecodeNewRun(body)
	if err != nil {
		return err
	}
	run, err := s.runs.CreateRun(r.Context(), projectOf(r), task, nr)
	if errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, renderRun(run, s.logLink(r)))
	return nil
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderRun(run, s.logLink(r)))
	return nil
}

// mutationDone answers a run mutation, translating a missing run into the
// right 404.
func (s *Server) mutationDone(w http.ResponseWriter, r *http.Request, ref store.RunRef, res *store.MutationResult, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renderRun(res.Run, s.logLink(r)))
	return nil
}

func (s *Server) updateRun(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	p, err := runs.DecodeRunPatch(body)
	if err != nil {
		return err
	}
	res, err := s.runs.UpdateRun(r.Context(), ref, p, idempotency(r, body))
	return s.mutationDone(w, r, ref, res, err)
}

func (s *Server) setOutput(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	output, err := runs.DecodeSetOutput(body)
	if err != nil {
		return err
	}
	res, err := s.runs.SetOutput(r.Context(), ref, output, idempotency(r, body))
	return s.mutationDone(w, r, ref, res, err)
}
