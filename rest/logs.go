package rest

import (
	"bufio"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"runhub/store"
	"runhub/store/runs"
)

// sessionLogsPageBytes caps one session_logs page (at least one entry is
// always returned): PostHog added the same cap after huge pages timed out.
// The store stops reading there, so limit=5000 of 1 MiB entries never
// loads more than the cap. X-Has-More tells the client to fetch the rest.
const sessionLogsPageBytes = store.ReadPageBytes

func (s *Server) appendLog(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	entries, err := runs.DecodeAppendLog(body)
	if err != nil {
		return err
	}
	res, err := s.runs.AppendLog(r.Context(), ref, entries, idempotency(r, body))
	return s.mutationDone(w, r, ref, res, err)
}

// runLogs streams every stored entry as JSONL, page by page from the store,
// never holding the whole log.
func (s *Server) runLogs(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	err = s.writeJSONL(w, r, ref)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	return err
}

// writeJSONL writes the run's log; it returns an error only before the
// response started.
func (s *Server) writeJSONL(w http.ResponseWriter, r *http.Request, ref store.RunRef) error {
	run, err := s.store.GetRun(r.Context(), ref)
	if err != nil {
		return err
	}
	// A resumed run's log is its chain's, oldest run first, then its own.
	refs, err := s.runs.Chain(r.Context(), run)
	if err != nil {
		return err
	}
	refs = append(refs, ref)
	w.Header().Set("Cache-Control", "no-cache")
	var bw *bufio.Writer
	for _, ref := range refs {
		err = s.store.StreamLog(r.Context(), ref, func(entry []byte) error {
			if bw == nil {
				w.Header().Set("Content-Type", "application/jsonl")
				w.WriteHeader(http.StatusOK)
				bw = bufio.NewWriterSize(w, 64<<10)
			}
			bw.Write(entry)
			return bw.WriteByte('\n')
		})
		if err != nil {
			break
		}
	}
	if bw == nil {
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/jsonl")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil && r.Context().Err() == nil {
		// Headers are gone; all that is left is to cut the response short.
		s.log.WarnContext(r.Context(), "log stream aborted", "run_id", ref.RunID, "err", err)
	}
	return nil
}

// LogURLTTL is how long a run's log_url works.
const LogURLTTL = time.Hour

// logLink returns the function that gives a run its log_url for request r:
// a signed link to /logs/{run_id}.jsonl valid LogURLTTL.
func (s *Server) logLink(r *http.Request) func(*store.Run) *string {
	return func(run *store.Run) *string {
		if run == nil {
			return nil
		}
		u := s.logLinks.link(baseURL(r), run.ID)
		return &u
	}
}

// signedLog serves GET /logs/{run_id}.jsonl for a valid signed link: the
// same bytes as .../logs, without an API key.
func (s *Server) signedLog(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["run_id"]
	if s.signer.Verify(http.MethodGet, "/logs/"+id+".jsonl", r.URL.Query()) != nil {
		s.writeError(w, r, errBadLink)
		return
	}
	run, err := s.store.RunByID(r.Context(), id)
	if err == nil {
		err = s.writeJSONL(w, r, run.Ref())
	}
	if err != nil {
		s.writeError(w, r, err)
	}
}

// splitList parses a comma-separated filter list.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (s *Server) sessionLogs(w http.ResponseWriter, r *http.Request) error {
	ref, err := s.runRef(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	lq := store.LogQuery{EventTypes: splitList(q.Get("event_types")), ExcludeTypes: splitList(q.Get("exclude_types")),
		MaxBytes: sessionLogsPageBytes}
	if v := q.Get("after"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return validation("after", "invalid_input", "Datetime has wrong format. Use RFC 3339, e.g. 2026-01-02T15:04:05Z.")
		}
		lq.After = &t
	}
	if lq.Limit, err = queryInt(r, "limit", 1000, 1, 5000); err != nil {
		return err
	}
	if lq.Offset, err = queryInt(r, "offset", 0, 0, 1<<31-1); err != nil {
		return err
	}
	if v := q.Get("after_seq"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return validation("after_seq", "invalid_input", "after_seq must be a non-negative integer.")
		}
		lq.AfterSeq = n
	}
	p, err := s.store.QueryLog(r.Context(), ref, lq)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	if err != nil {
		return err
	}
	entries := p.Entries
	h := w.Header()
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Total-Count", strconv.FormatInt(p.Total, 10))
	h.Set("X-Matching-Count", strconv.FormatInt(p.Matching, 10))
	// X-Filtered-Count is PostHog's name for the matching count (its
	// clients page with it); the page's own size is X-Returned-Count.
	h.Set("X-Filtered-Count", strconv.FormatInt(p.Matching, 10))
	h.Set("X-Returned-Count", strconv.Itoa(len(entries)))
	h.Set("X-Has-More", strconv.FormatBool(int64(lq.Offset+len(entries)) < p.Matching))
	writeJSON(w, http.StatusOK, entries)
	return nil
}
