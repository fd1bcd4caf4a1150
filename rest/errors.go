package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"runhub/proxy"
	"runhub/store"
	"runhub/store/runs"
)

// apiError is the contract's standard error body:
// {"type", "code", "detail", "attr"}.
type apiError struct {
	Status     int     `json:"-"`
	Type       string  `json:"type"`
	Code       string  `json:"code"`
	Detail     string  `json:"detail"`
	Attr       *string `json:"attr"`
	RetryAfter int     `json:"-"` // seconds, for 429
}

func (e *apiError) Error() string { return e.Detail }

// handlerError is the {"error": "sentence"} body of command, artifacts,
// presign, relay and set_output.
type handlerError struct {
	Status int
	Msg    string
}

func (e *handlerError) Error() string { return e.Msg }

func attr(name string) *string {
	if name == "" {
		return nil
	}
	return &name
}

func validation(attrName, code, detail string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: code, Detail: detail, Attr: attr(attrName)}
}

func notFound(detail string) *apiError {
	return &apiError{Status: http.StatusNotFound, Type: "invalid_request", Code: "not_found", Detail: detail}
}

var (
	errUnauthenticated = &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "not_authenticated",
		Detail: "Authentication credentials were not provided."}
	errBadKey = &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "authentication_failed",
		Detail: "Invalid personal API key."}
	errNoProject = &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: "API key does not have access to this project."}
	errNotFound      = notFound("Not found.")
	errTaskNotFound  = notFound("Task not found")
	errMethod        = &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request", Code: "method_not_allowed", Detail: "Method not allowed."}
	errTooLarge      = &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request", Code: "request_too_large", Detail: "Request body is larger than the limit."}
	errBodyTimeout   = &apiError{Status: http.StatusRequestTimeout, Type: "invalid_request", Code: "request_timeout", Detail: "The request body was not received in time."}
	errServer        = &apiError{Status: http.StatusInternalServerError, Type: "server_error", Code: "error", Detail: "A server error occurred."}
	errStoreTimeout  = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "unavailable", Detail: "The store is busy; retry shortly."}
	errStoreReadOnly = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "unavailable", Detail: "The store cannot write at the moment; retry later.", RetryAfter: storeUnavailableRetryAfter}
)

// storeUnavailableRetryAfter is the Retry-After (seconds) of a write the
// store could not take (full disk, read-only mount): unlike a busy lock it
// is not over in a second, and /readyz re-probes every WriteProbeInterval.
const storeUnavailableRetryAfter = int(WriteProbeInterval / time.Second)

func missingScope(scope string) *apiError {
	return &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: fmt.Sprintf("API key missing required scope '%s'", scope)}
}

func throttled(retryAfter int) *apiError {
	return &apiError{Status: http.StatusTooManyRequests, Type: "throttled_error", Code: "throttled",
		Detail: fmt.Sprintf("Request was throttled. Expected available in %d seconds.", retryAfter), RetryAfter: retryAfter}
}

// jsonAppender is a value that encodes itself without reflection (a run,
// the answer of every run mutation).
type jsonAppender interface{ appendJSON(dst []byte) []byte }

// maxPooledResponse bounds the response buffers kept for reuse: a run
// answer is about 1 KiB, and a rare huge one (a run with a large output)
// is left to the garbage collector rather than pinned in the pool.
const maxPooledResponse = 64 << 10

var responseBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// jsonContentType is the Content-Type header's value, shared by every
// response rather than a new slice each (Header.Set allocates one); the
// header is only ever replaced, never written into.
var jsonContentType = []string{"application/json"}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	if a, ok := v.(jsonAppender); ok {
		bp := responseBufs.Get().(*[]byte)
		b := a.appendJSON((*bp)[:0])
		writeJSONBytes(w, status, b)
		if cap(b) <= maxPooledResponse {
			*bp = b[:0]
			responseBufs.Put(bp)
		}
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"type":"server_error","code":"error","detail":"A server error occurred.","attr":null}`)
	}
	writeJSONBytes(w, status, b)
}

func writeJSONBytes(w http.ResponseWriter, status int, b []byte) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	w.Write(b)
}

// writeError is the one place that turns an error into an HTTP response.
// Anything it does not recognise is logged and answered with a bare 500:
// no message of an internal error ever reaches the client.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var he *handlerError
	var ve *store.ValidationError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he):
		writeJSON(w, he.Status, map[string]string{"error": he.Msg})
		return
	case errors.As(err, &ve):
		ae = validation(ve.Attr, ve.Code, ve.Detail)
	case errors.As(err, &mbe):
		ae = errTooLarge
	case errors.Is(err, store.ErrNotFound):
		ae = errNotFound
	case errors.Is(err, store.ErrUnavailable):
		// Full disk, read-only mount: the operator must hear of it, and
		// the client may retry once it is fixed.
		s.log.ErrorContext(r.Context(), "store cannot write", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = errStoreReadOnly
	case errors.Is(err, store.ErrIdempotencyMismatch):
		ae = validation("Idempotency-Key", "idempotency_key_reused", "This Idempotency-Key was already used with a different request.")
	case errors.Is(err, runs.ErrOutputNotDict):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": runs.ErrOutputNotDict.Error()})
		return
	case errors.Is(err, runs.ErrOutputInvalid):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "Output validation error: " + strings.TrimPrefix(err.Error(), runs.ErrOutputInvalid.Error()+": ")})
		return
	case errors.Is(err, proxy.ErrNoAgent):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "No active sandbox for this task run"})
		return
	case errors.Is(err, proxy.ErrRunEnded):
		writeJSON(w, http.StatusConflict, map[string]string{"error": "Task run is no longer active"})
		return
	case errors.Is(err, store.ErrQueueFull):
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "Too many queued messages for this task run"})
		return
	case errors.Is(err, proxy.ErrBadSandbox):
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "Invalid sandbox URL"})
		return
	case errors.Is(err, proxy.ErrAgentTimeout):
		writeJSON(w, http.StatusGatewayTimeout, map[string]string{"error": "Agent server request timed out"})
		return
	case errors.Is(err, proxy.ErrAgentGone):
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "Agent server is not reachable"})
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The body did not arrive within the body-read deadline (Go has
		// cancelled the request's context by now; the client may still
		// be there to read this).
		ae = errBodyTimeout
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		return
	case errors.Is(err, store.ErrBusy):
		// Another process held the store's lock past its busy timeout:
		// transient, the client retries, not a server fault.
		ae = errStoreTimeout
		w.Header().Set("Retry-After", "1")
	default:
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = errServer
	}
	if ae.Type == "authentication_error" {
		s.logAuthFailure(r, ae.Status, ae.Code)
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	writeJSON(w, ae.Status, ae)
}
