package rest

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"runhub/store"
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

// runFields are the writable fields shared by run create and PATCH.
type runFields struct {
	status, environment         *string
	stage, branch, errorMessage **string
	outputSet                   bool
	output                      map[string]json.RawMessage
	state                       map[string]json.RawMessage
	stateRemoveKeys             []string
}

func decodeRunFields(f fields) (*runFields, error) {
	var rf runFields
	var err error
	if _, rf.status, err = f.str("status", false); err != nil {
		return nil, err
	}
	if _, rf.environment, err = f.str("environment", false); err != nil {
		return nil, err
	}
	for name, v := range map[string]*string{"status": rf.status, "environment": rf.environment} {
		if v != nil && *v == "" {
			return nil, validation(name, "invalid_choice", `"" is not a valid choice.`)
		}
	}
	for _, nf := range []struct {
		name string
		dst  ***string
	}{{"stage", &rf.stage}, {"branch", &rf.branch}, {"error_message", &rf.errorMessage}} {
		present, v, err := f.str(nf.name, true)
		if err != nil {
			return nil, err
		}
		if present {
			*nf.dst = &v
		}
	}
	if rf.outputSet, rf.output, err = f.object("output", true); err != nil {
		return nil, err
	}
	if _, rf.state, err = f.object("state", false); err != nil {
		return nil, err
	}
	if rf.stateRemoveKeys, err = f.strList("state_remove_keys"); err != nil {
		return nil, err
	}
	return &rf, nil
}

func deref(p **string) *string {
	if p == nil {
		return nil
	}
	return *p
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
	f, _, err := decodeRequest(r)
	if err != nil {
		return err
	}
	rf, err := decodeRunFields(f)
	if err != nil {
		return err
	}
	nr := store.NewRun{Stage: deref(rf.stage), Branch: deref(rf.branch), ErrorMessage: deref(rf.errorMessage),
		Output: rf.output, State: rf.state}
	if rf.status != nil {
		nr.Status = *rf.status
	}
	if rf.environment != nil {
		nr.Environment = *rf.environment
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

// decodeRunPatch decodes a run PATCH body. It is the decoder the fuzz target
// exercises.
func decodeRunPatch(body []byte) (store.RunPatch, error) {
	f, err := parseBody(body)
	if err != nil {
		return store.RunPatch{}, err
	}
	rf, err := decodeRunFields(f)
	if err != nil {
		return store.RunPatch{}, err
	}
	p := store.RunPatch{Status: rf.status, Stage: rf.stage, Branch: rf.branch, ErrorMessage: rf.errorMessage,
		Environment: rf.environment, State: rf.state, StateRemoveKeys: rf.stateRemoveKeys}
	if rf.outputSet {
		if rf.output == nil {
			p.ClearOutput = true
		} else {
			p.Output = rf.output
		}
	}
	return p, nil
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
	p, err := decodeRunPatch(body)
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
	f, body, err := decodeRequest(r)
	if err != nil {
		return err
	}
	var output map[string]json.RawMessage
	if raw := f["output"]; jsonKind(raw) != "dict" || json.Unmarshal(raw, &output) != nil {
		return &handlerError{Status: http.StatusBadRequest, Msg: "output must be a dictionary"}
	}
	res, err := s.runs.SetOutput(r.Context(), ref, output, idempotency(r, body))
	return s.mutationDone(w, r, ref, res, err)
}
