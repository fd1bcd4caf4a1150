package rest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/runs"
)

// The sequenced event ingest, POST .../runs/{id}/event_stream/: PostHog's
// transport for a sandbox's events. The body is NDJSON read as a stream:
// each line is stored (through the runs service, the one mutation path)
// and published as soon as it has arrived, not when the upload ends, so a
// viewer follows the agent live while its sender keeps one upload open for
// minutes. The sender's seq makes every line idempotent (store.IngestEvents).
// Every answer of this route, errors included, has PostHog's shape:
// {"accepted", "duplicate", "last_accepted_seq"} or {"error",
// "last_accepted_seq"?}.

// ingestBatchLines bounds the lines stored in one transaction. Lines are
// stored as soon as no further complete line is waiting in the read
// buffer, so a live sender's lines go one by one; a sender that wrote many
// at once (a backlog after a reconnect) gets them stored 100 per
// transaction, which is most of the speed of a bulk append while keeping
// each transaction short.
const ingestBatchLines = 100

// ingestReadBuffer is the read buffer of an upload: lines are read through
// it, and a line longer than it is gathered piece by piece up to
// runs.MaxIngestLineBytes.
const ingestReadBuffer = 64 << 10

// ingestCurrentProject is the project id that stands for "the project of
// the credential" (the token's team, or the run's project for an API key).
const ingestCurrentProject = "@current"

// ingestReply is an error answer of the ingest route, in PostHog's shape.
type ingestReply struct {
	status int
	msg    string
	code   string // "code" of a refused token, else omitted
	last   *int64 // last_accepted_seq, when the answer carries it
}

func (e *ingestReply) Error() string { return e.msg }

func ingestErr(status int, msg string) *ingestReply { return &ingestReply{status: status, msg: msg} }

func (e *ingestReply) with(last int64) *ingestReply { e.last = &last; return e }

func (s *Server) writeIngest(w http.ResponseWriter, r *http.Request, e *ingestReply) {
	body := map[string]any{"error": e.msg}
	if e.code != "" {
		body["code"] = e.code
	}
	if e.last != nil {
		body["last_accepted_seq"] = *e.last
	}
	if e.status == http.StatusUnauthorized || e.status == http.StatusForbidden {
		code := e.code
		if code == "" {
			code = "permission_denied"
		}
		s.logAuthFailure(r, e.status, code)
	}
	writeJSON(w, e.status, body)
}

// ingestRef authorises an upload: a Bearer ingest token (a JWT of
// audience tokens.AudienceIngest for this run) or an API key with
// task:write on the run's project. The project in the path may be
// "@current", the credential's project. It returns the run and the id of
// the API key behind the credential (0: a token minted before tokens
// named their key), whose revocation ends the upload.
func (s *Server) ingestRef(r *http.Request) (store.RunRef, int64, error) {
	secret := bearer(r)
	if secret == "" {
		return store.RunRef{}, 0, ingestErr(http.StatusUnauthorized, "Missing authorization bearer token")
	}
	task, err := pathUUID(r, "task_id", errNotFound)
	if err != nil {
		return store.RunRef{}, 0, ingestErr(http.StatusNotFound, "Task run not found")
	}
	run, err := pathUUID(r, "run_id", errNotFound)
	if err != nil {
		return store.RunRef{}, 0, ingestErr(http.StatusNotFound, "Task run not found")
	}
	pathProject := mux.Vars(r)["project_id"]
	if strings.Count(secret, ".") == 2 { // a JWT; API keys contain no dots
		c, err := s.tokens.Verify(secret, tokens.AudienceIngest)
		if err != nil {
			return store.RunRef{}, 0, &ingestReply{status: http.StatusUnauthorized, msg: "Invalid event ingest token", code: "invalid_token"}
		}
		if c.TaskID != task || c.RunID != run {
			return store.RunRef{}, 0, ingestErr(http.StatusForbidden, "Token does not match task run")
		}
		if pathProject != ingestCurrentProject && pathProject != strconv.FormatInt(c.TeamID, 10) {
			return store.RunRef{}, 0, ingestErr(http.StatusForbidden, "Token does not match project")
		}
		return store.RunRef{ProjectID: c.TeamID, TaskID: task, RunID: run}, c.KeyID, nil
	}
	key, err := s.authenticate(r)
	if err != nil {
		return store.RunRef{}, 0, ingestErr(http.StatusUnauthorized, "Invalid personal API key")
	}
	if s.limiter != nil {
		if ok, after := s.limiter.allow(key.ID, time.Now()); !ok {
			return store.RunRef{}, 0, throttled(after)
		}
	}
	if !key.HasScope(store.ScopeWrite) {
		return store.RunRef{}, 0, ingestErr(http.StatusForbidden, fmt.Sprintf("API key missing required scope '%s'", store.ScopeWrite))
	}
	var project int64
	if pathProject == ingestCurrentProject {
		found, err := s.store.RunByID(r.Context(), run)
		if errors.Is(err, store.ErrNotFound) || (err == nil && (!key.CanReach(found.ProjectID) || found.TaskID != task)) {
			// Another project's run is indistinguishable from a missing one.
			return store.RunRef{}, 0, ingestErr(http.StatusNotFound, "Task run not found")
		}
		if err != nil {
			return store.RunRef{}, 0, err
		}
		project = found.ProjectID
	} else {
		p, err := strconv.ParseInt(pathProject, 10, 64)
		if err != nil || p <= 0 {
			return store.RunRef{}, 0, ingestErr(http.StatusNotFound, "Task run not found")
		}
		if !key.CanReach(p) {
			return store.RunRef{}, 0, ingestErr(http.StatusForbidden, "API key does not have access to this project.")
		}
		project = p
	}
	return store.RunRef{ProjectID: project, TaskID: task, RunID: run}, key.ID, nil
}

// isEventStream reports whether r's path is an event_stream route (for
// its 405, answered by the router).
func isEventStream(r *http.Request) bool {
	p := strings.TrimSuffix(r.URL.Path, "/")
	return strings.HasSuffix(p, "/event_stream") && strings.HasPrefix(p, "/api/projects/")
}

// eventStream serves POST .../runs/{id}/event_stream/.
func (s *Server) eventStream(w http.ResponseWriter, r *http.Request) {
	ref, keyID, err := s.ingestRef(r)
	if err == nil {
		err = s.ingest(w, r, ref, keyID)
	}
	var reply *ingestReply
	var ae *apiError
	switch {
	case err == nil:
	case errors.As(err, &reply):
		s.writeIngest(w, r, reply)
	case errors.Is(err, store.ErrNotFound):
		s.writeIngest(w, r, ingestErr(http.StatusNotFound, "Task run not found"))
	case errors.As(err, &ae): // throttled
		if ae.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
		}
		s.writeIngest(w, r, ingestErr(ae.Status, ae.Detail))
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, store.ErrBusy):
		// Transient: the sender retries, resending from last_accepted_seq.
		s.log.WarnContext(r.Context(), "event ingest: store cannot write now", "run_id", ref.RunID, "err", err)
		w.Header().Set("Retry-After", "1")
		s.writeIngest(w, r, ingestErr(http.StatusServiceUnavailable, "The store cannot write at the moment; retry shortly."))
	case r.Context().Err() != nil:
		// The sender went away; nobody reads an answer.
	default:
		s.log.ErrorContext(r.Context(), "event ingest failed", "run_id", ref.RunID, "err", err)
		s.writeIngest(w, r, ingestErr(http.StatusInternalServerError, "A server error occurred."))
	}
}

// ingest reads the upload line by line, storing each as it arrives, and
// writes the 200 answer; any other answer is returned as an error.
func (s *Server) ingest(w http.ResponseWriter, r *http.Request, ref store.RunRef, keyID int64) error {
	ctx := r.Context()
	st, err := s.runs.IngestState(ctx, ref)
	if err != nil {
		return err
	}
	// The upload may last minutes: the body deadline becomes an idle
	// deadline, pushed back by every line.
	rc := http.NewResponseController(w)
	idle := s.timeouts.IngestIdle
	var mu sync.Mutex // orders alive and the revocation's deadline
	revoked := false
	alive := func() {
		mu.Lock()
		defer mu.Unlock()
		if r.ContentLength != 0 && !revoked { // an empty body has no read to bound
			rc.SetReadDeadline(time.Now().Add(idle))
		}
	}
	alive()
	// The key behind the credential revoked (on any node): the read
	// waiting for the next line ends now, and so does the upload.
	if g, ok := s.tokens.(interface{ Revocations() *tokens.Revocations }); ok {
		stop := g.Revocations().Watch(keyID, func() {
			mu.Lock()
			defer mu.Unlock()
			revoked = true
			rc.SetReadDeadline(time.Now())
		})
		defer stop()
	}

	up := upload{br: bufio.NewReaderSize(r.Body, ingestReadBuffer), last: st.LastAccepted,
		revoked: func() bool { mu.Lock(); defer mu.Unlock(); return revoked }}
	final, err := s.readUpload(r, ref, &up, alive)
	if err != nil {
		return err
	}
	if final != nil {
		res, err := s.runs.CompleteIngest(ctx, ref, *final)
		if err != nil {
			return err
		}
		up.last = res.State.LastAccepted
		if res.Conflict != nil {
			s.log.InfoContext(ctx, "event ingest refused", "run_id", ref.RunID, "reason", res.Conflict.Reason, "last_accepted_seq", up.last)
			return ingestErr(http.StatusConflict, res.Conflict.Error()).with(up.last)
		}
	}
	writeJSON(w, http.StatusOK, map[string]int64{"accepted": int64(up.accepted), "duplicate": int64(up.duplicate), "last_accepted_seq": up.last})
	return nil
}

// upload is the state of one event-stream request.
type upload struct {
	br        *bufio.Reader
	read      int // body bytes read
	events    int // event lines read
	pending   []store.IngestLine
	accepted  int
	duplicate int
	last      int64 // last_accepted_seq as of the newest store answer
	revoked   func() bool
}

// readUpload reads and stores every line; it returns the completion
// line's final_seq, if the upload ended with one. alive is called after
// every line.
func (s *Server) readUpload(r *http.Request, ref store.RunRef, up *upload, alive func()) (*int64, error) {
	var final *int64
	now := time.Now
	if s.runs.Now != nil {
		now = s.runs.Now
	}
	for {
		line, err := up.readLine()
		if err != nil && !errors.Is(err, io.EOF) {
			// Store the lines that arrived whole before the failure: they
			// are the sender's, and it resends them as duplicates anyway;
			// nothing more is stored once its credential is revoked.
			if !up.revoked() {
				if ferr := s.flushIngest(r, ref, up); ferr != nil {
					return nil, ferr
				}
			}
			return nil, s.uploadFailed(r, ref, up, err)
		}
		if up.revoked() {
			return nil, errRevoked
		}
		alive()
		if len(bytes.TrimSpace(line)) > 0 {
			if reply := up.take(line, now(), &final); reply != nil {
				if ferr := s.flushIngest(r, ref, up); ferr != nil {
					return nil, ferr
				}
				if reply.status == http.StatusRequestEntityTooLarge {
					reply.with(up.last)
				}
				return nil, reply
			}
		}
		eof := errors.Is(err, io.EOF)
		if eof || len(up.pending) >= ingestBatchLines || !up.lineWaiting() {
			if ferr := s.flushIngest(r, ref, up); ferr != nil {
				return nil, ferr
			}
		}
		if eof {
			return final, nil
		}
	}
}

// take decodes a non-blank line into the pending lines, or into *final
// for the completion line; a line that cannot be taken is the answer.
func (up *upload) take(line []byte, now time.Time, final **int64) *ingestReply {
	d, err := runs.DecodeIngestLine(line, now)
	var le *runs.IngestLineError
	switch {
	case errors.As(err, &le):
		return ingestErr(http.StatusBadRequest, le.Detail)
	case err != nil:
		return ingestErr(http.StatusBadRequest, "Invalid JSON line")
	case *final != nil:
		return ingestErr(http.StatusBadRequest, "Completion line must be the final event stream line")
	case d.Complete:
		*final = &d.FinalSeq
		return nil
	}
	up.events++
	if up.events > runs.MaxIngestEvents {
		return ingestErr(http.StatusRequestEntityTooLarge, "Too many events in request")
	}
	up.pending = append(up.pending, d.Event)
	return nil
}

// errLineTooLarge and errUploadTooLarge end a read at a limit.
var (
	errLineTooLarge   = errors.New("event line is too large")
	errUploadTooLarge = errors.New("event ingest request is too large")
)

// readLine returns the next line without its "\n" (the last one may lack
// it, and comes with io.EOF). It stops at the limits of one line and of
// the upload without reading further.
func (up *upload) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := up.br.ReadSlice('\n')
		up.read += len(frag)
		if up.read > runs.MaxIngestRequestBytes {
			return nil, errUploadTooLarge
		}
		body := bytes.TrimSuffix(frag, []byte("\n"))
		if len(line)+len(body) > runs.MaxIngestLineBytes {
			return nil, errLineTooLarge
		}
		switch {
		case err == nil:
			// A copy: the buffer's bytes change with the next read, and
			// the line may wait in a batch until then.
			return append(line, body...), nil
		case errors.Is(err, bufio.ErrBufferFull):
			line = append(line, frag...)
		default:
			return append(line, body...), err
		}
	}
}

// lineWaiting reports whether a whole line is already in the read buffer,
// so that storing can wait for it without delaying anything.
func (up *upload) lineWaiting() bool {
	n := up.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := up.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// flushIngest stores the pending lines; a gap or a completed stream ends
// the upload with 409.
func (s *Server) flushIngest(r *http.Request, ref store.RunRef, up *upload) error {
	if len(up.pending) == 0 {
		return nil
	}
	res, err := s.runs.IngestEvents(r.Context(), ref, up.pending)
	up.pending = up.pending[:0]
	if err != nil {
		return err
	}
	up.accepted += res.Accepted
	up.duplicate += res.Duplicate
	up.last = res.State.LastAccepted
	if res.Conflict != nil {
		s.log.InfoContext(r.Context(), "event ingest refused", "run_id", ref.RunID, "reason", res.Conflict.Reason, "last_accepted_seq", up.last)
		return ingestErr(http.StatusConflict, res.Conflict.Error()).with(up.last)
	}
	return nil
}

// errRevoked ends an upload whose credential's key was revoked.
var errRevoked = ingestErr(http.StatusUnauthorized, "The credential of this upload was revoked")

// uploadFailed is the answer to a body that could not be read on.
func (s *Server) uploadFailed(r *http.Request, ref store.RunRef, up *upload, err error) error {
	var mbe *http.MaxBytesError
	switch {
	case up.revoked():
		s.log.InfoContext(r.Context(), "event ingest upload ended: its key was revoked", "run_id", ref.RunID)
		return errRevoked
	case errors.Is(err, errLineTooLarge):
		return ingestErr(http.StatusRequestEntityTooLarge, "Event line is too large").with(up.last)
	case errors.Is(err, errUploadTooLarge), errors.As(err, &mbe):
		return ingestErr(http.StatusRequestEntityTooLarge, "Event ingest request is too large").with(up.last)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.log.InfoContext(r.Context(), "event ingest upload idle; ended", "run_id", ref.RunID,
			"idle", s.timeouts.IngestIdle.String(), "last_accepted_seq", up.last)
		return ingestErr(http.StatusRequestTimeout, "Event stream upload was idle for too long").with(up.last)
	}
	// The sender went away mid-line (or its connection broke): nobody
	// may be there to read this, and what arrived whole is stored.
	s.log.InfoContext(r.Context(), "event ingest upload cut short", "run_id", ref.RunID, "err", err, "last_accepted_seq", up.last)
	return ingestErr(http.StatusBadRequest, "Event stream upload was cut short").with(up.last)
}
