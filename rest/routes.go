package rest

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"runhub/hub"
	"runhub/proxy"
	"runhub/store"
)

// slash makes the trailing slash optional without a redirect.
const slash = "{_s:/?}"

const (
	tasksPath = "/api/projects/{project_id}/tasks"
	taskPath  = tasksPath + "/{task_id}"
	runsPath  = taskPath + "/runs"
	runPath   = runsPath + "/{run_id}"
)

func (s *Server) routes() {
	r := s.router
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { s.writeError(w, req, errNotFound) })
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if isEventStream(req) { // its errors have PostHog's shape
			s.writeIngest(w, req, ingestErr(http.StatusMethodNotAllowed, "Method not allowed"))
			return
		}
		s.writeError(w, req, errMethod)
	})
	read, write := store.ScopeRead, store.ScopeWrite
	handle := func(path, method, scope string, h handlerFunc) {
		r.Handle(path+slash, s.project(scope, h)).Methods(method)
	}
	// append_log first: it is the hot route (a request per agent event)
	// and mux tries each route's regexp in turn (a tenth of the request's
	// CPU when it came twelfth). No other route matches its paths, so the
	// order changes nothing else.
	handle(runPath+"/append_log", http.MethodPost, write, s.appendLog)
	// ServeHTTP matches it before mux does (hotRoute), to the same handler.
	s.hot = newHotRoute(runPath+"/append_log", http.MethodPost, s.project(write, s.appendLog))
	s.opsRoutes()

	handle(tasksPath, http.MethodGet, read, s.listTasks)
	handle(tasksPath, http.MethodPost, write, s.createTask)
	// Before taskPath: "summaries" is no task id (and is no UUID either).
	handle(tasksPath+"/summaries", http.MethodPost, read, s.taskSummaries)
	handle(taskPath, http.MethodGet, read, s.getTask)
	handle(taskPath, http.MethodPatch, write, s.updateTask)
	handle(taskPath, http.MethodDelete, write, s.deleteTask)
	handle(taskPath+"/run", http.MethodPost, write, s.runTask)

	handle(runsPath, http.MethodGet, read, s.listRuns)
	handle(runsPath, http.MethodPost, write, s.createRun)
	handle(runPath, http.MethodGet, read, s.getRun)
	handle(runPath, http.MethodPatch, write, s.updateRun)
	handle(runPath+"/logs", http.MethodGet, read, s.runLogs)
	handle(runPath+"/session_logs", http.MethodGet, read, s.sessionLogs)
	handle(runPath+"/set_output", http.MethodPatch, write, s.setOutput)

	r.HandleFunc("/logs/{run_id}.jsonl", s.signedLog).Methods(http.MethodGet)
	handle(runPath+"/artifacts", http.MethodPost, write, s.uploadArtifacts)
	handle(runPath+"/artifacts/presign", http.MethodPost, read, s.presignArtifact)
	handle(runPath+"/artifacts/download", http.MethodPost, read, s.downloadArtifact)
	handle(runPath+"/artifacts/prepare_upload", http.MethodPost, write, s.prepareUploads)
	handle(runPath+"/artifacts/finalize_upload", http.MethodPost, write, s.finalizeUploads)
	if _, presigns := s.blobs.(presigner); !presigns {
		r.HandleFunc("/blobs/{key:.+}", s.downloadBlob).Methods(http.MethodGet)
		r.HandleFunc(uploadsPrefix+"{key:.+}", s.uploadBlob).Methods(http.MethodPost)
	}
	handle(runPath+"/command", http.MethodPost, write, s.command)
	handle(runPath+"/start", http.MethodPost, write, s.startRun)
	handle(runPath+"/cancel", http.MethodPost, write, s.cancelRun)
	handle(runPath+"/resume_in_cloud", http.MethodPost, write, s.resumeInCloud)
	r.HandleFunc("/.well-known/jwks.json", s.tokens.ServeJWKS).Methods(http.MethodGet)
	handle(runPath+"/connection_token", http.MethodGet, read, s.mintToken)
	handle(runPath+"/stream_token", http.MethodGet, read, s.streamToken)
	handle(runPath+"/relay_message", http.MethodPost, write, s.relayMessage)
	// Its own authorisation (ingest token or key) and error shape.
	r.HandleFunc(runPath+"/event_stream"+slash, s.eventStream).Methods(http.MethodPost)
	if s.agent != nil {
		r.HandleFunc("/agent/connect"+slash, func(w http.ResponseWriter, r *http.Request) {
			s.agent(w, r.WithContext(proxy.WithAuthFailureLog(r.Context(), s.logAuthFailure)))
		}).Methods(http.MethodGet)
	}
	if s.ws != nil {
		r.Handle("/ws"+slash, http.HandlerFunc(s.serveWS)).Methods(http.MethodGet)
	}
	byKey := s.project(read, func(w http.ResponseWriter, r *http.Request) error {
		run, err := s.runOf(r)
		if err != nil {
			return err
		}
		// The stream ends when the key is revoked.
		key := r.Context().Value(keyCtx).(*store.APIKey)
		return s.stream(w, r.WithContext(hub.WithKey(r.Context(), key.ID)), run)
	})
	// A connection token (?token= or a Bearer JWT) stands in for the
	// API key: browsers cannot set headers on a WebSocket.
	r.Handle(runPath+"/stream"+slash, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok := connectionToken(r); tok != "" {
			s.streamWithToken(w, r, tok)
			return
		}
		byKey.ServeHTTP(w, r)
	})).Methods(http.MethodGet)
}

// pathUUID returns the canonical form of a UUID path variable; anything
// that is not a UUID is 404, as the contract asks.
func pathUUID(r *http.Request, name string, notFoundErr error) (string, error) {
	v := mux.Vars(r)[name]
	if len(v) != 36 {
		return "", notFoundErr
	}
	id, err := uuid.Parse(v)
	if err != nil {
		return "", notFoundErr
	}
	// A UUID of 36 characters differs from its canonical form only in the
	// case of its hex digits: a lower-case one (what clients send back) is
	// returned as it is, without formatting it again.
	if strings.IndexFunc(v, func(c rune) bool { return c >= 'A' && c <= 'F' }) < 0 {
		return v, nil
	}
	return id.String(), nil
}

// runRef resolves the project, task and run of a run path.
func (s *Server) runRef(r *http.Request) (store.RunRef, error) {
	return refIn(r, projectOf(r))
}

// refIn parses the task and run of a run path in project.
func refIn(r *http.Request, project int64) (store.RunRef, error) {
	task, err := pathUUID(r, "task_id", errTaskNotFound)
	if err != nil {
		return store.RunRef{}, err
	}
	run, err := pathUUID(r, "run_id", errNotFound)
	if err != nil {
		return store.RunRef{}, err
	}
	return store.RunRef{ProjectID: project, TaskID: task, RunID: run}, nil
}

// runOf loads the run of a run path, telling an unknown task from an
// unknown run.
func (s *Server) runOf(r *http.Request) (*store.Run, error) {
	ref, err := s.runRef(r)
	if err != nil {
		return nil, err
	}
	run, err := s.store.GetRun(r.Context(), ref)
	if errors.Is(err, store.ErrNotFound) {
		return nil, s.whichNotFound(r, ref.TaskID)
	}
	return run, err
}

// runAndBody starts a run endpoint that takes a body: the run first, as on
// every run endpoint, so that a run that is not there is 404 whatever the
// body holds; then the body.
func (s *Server) runAndBody(r *http.Request) (store.RunRef, []byte, error) {
	run, err := s.runOf(r)
	if err != nil {
		return store.RunRef{}, nil, err
	}
	body, err := readBody(r)
	return run.Ref(), body, err
}

// whichNotFound tells "Task not found" from a missing run.
func (s *Server) whichNotFound(r *http.Request, task string) error {
	if _, err := s.store.GetTask(r.Context(), projectOf(r), task); errors.Is(err, store.ErrNotFound) {
		return errTaskNotFound
	} else if err != nil {
		return err
	}
	return errNotFound
}

// page is a parsed limit/offset pair.
type page struct{ limit, offset int }

// Pagination defaults of the contract, for every list (tasks and runs):
// PostHog's TasksPagination, default 50 and at most 100, so a client that
// pages by what it was given (PostHog's desktop app asks limit=500 and
// follows next) sees the pages it sees there. Like DRF's
// LimitOffsetPagination, an unparseable limit falls back to the default and
// one above the maximum is clamped, rather than failing the request.
const (
	defaultPageLimit = 50
	maxPageLimit     = 100
)

func parsePage(r *http.Request) page {
	p := page{limit: defaultPageLimit}
	q := r.URL.Query()
	if v, err := strconv.Atoi(q.Get("limit")); err == nil && v > 0 {
		p.limit = min(v, maxPageLimit)
	}
	if v, err := strconv.Atoi(q.Get("offset")); err == nil && v > 0 {
		p.offset = v
	}
	return p
}

// listBody renders {"count", "next", "previous", "results"} with absolute
// next/previous links.
func listBody(r *http.Request, p page, total int64, results any) map[string]any {
	link := func(offset int) *string {
		u := url.URL{Path: r.URL.Path}
		q := r.URL.Query()
		q.Set("limit", strconv.Itoa(p.limit))
		if offset > 0 {
			q.Set("offset", strconv.Itoa(offset))
		} else {
			q.Del("offset")
		}
		u.RawQuery = q.Encode()
		s := baseURL(r) + u.String()
		return &s
	}
	var next, prev *string
	// offset+limit < total, written so that it cannot overflow: an offset
	// near MaxInt64 would wrap the sum negative and link back to the first
	// page, and a client following next would loop for ever.
	if int64(p.limit) < total-int64(p.offset) {
		next = link(p.offset + p.limit)
	}
	if p.offset > 0 {
		prev = link(max(0, p.offset-p.limit))
	}
	return map[string]any{"count": total, "next": next, "previous": prev, "results": results}
}

// queryInt parses an integer query parameter within [lo, hi].
func queryInt(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < lo || n > hi {
		return 0, validation(name, "invalid_input", fmt.Sprintf("Ensure %s is an integer between %d and %d.", name, lo, hi))
	}
	return n, nil
}
