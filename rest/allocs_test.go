package rest_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// maxAllocsPerAppend bounds the allocations of one append_log request of
// one 200 B entry to an existing run, served by the real handler on
// SQLite: authentication with a cached key, routing, decoding and
// validation, the store's transaction, the publication to the hub and the
// response. Measured: 111 (176 before
// the SQLite store read appends' runs from its cache, 232 before the
// log_url cache, the run encoder, the hot route and the entries' split;
// about 76 of them are the SQLite store's); the bound leaves room for the
// few the store's group commit varies by.
const maxAllocsPerAppend = 120

// TestAppendLogAllocs fails when the append_log path allocates more than
// maxAllocsPerAppend: allocations, unlike times, are deterministic, and
// the many-runs load spends much of its CPU collecting them.
func TestAppendLogAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's own allocations are counted too")
	}
	as := newAppendServer(t, 1)
	pad := strings.Repeat("x", 200-len(`{"type":"bench","t":1234567890123456789,"pad":""}`))
	body := []byte(`{"entries":[{"type":"bench","t":1234567890123456789,"pad":"` + pad + `"}]}`)
	req := httptest.NewRequest(http.MethodPost, as.urls[0], nil)
	req.Header.Set("Authorization", "Bearer "+as.secret)
	req.Header.Set("Content-Type", "application/json")
	rd := bytes.NewReader(body)
	rec := &reusedRecorder{header: http.Header{}}
	appendOnce := func() {
		rd.Reset(body)
		req.Body, req.ContentLength = io.NopCloser(rd), int64(len(body))
		rec.reset()
		as.handler.ServeHTTP(rec, req)
		if rec.code != http.StatusOK {
			t.Fatalf("append_log: %d %s", rec.code, rec.body.Bytes())
		}
	}
	for range 20 { // warm up: the key cache, prepared statements, pools
		appendOnce()
	}
	got := testing.AllocsPerRun(200, appendOnce)
	t.Logf("%.1f allocations per append_log request (limit %d)", got, maxAllocsPerAppend)
	if got > maxAllocsPerAppend {
		t.Errorf("%.1f allocations per append_log request, want at most %d", got, maxAllocsPerAppend)
	}
}

// reusedRecorder is a ResponseWriter a test reuses across requests, so
// that the allocations counted are the handler's, not a recorder's.
type reusedRecorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *reusedRecorder) reset() {
	clear(r.header)
	r.code = 0
	r.body.Reset()
}

func (r *reusedRecorder) Header() http.Header { return r.header }

func (r *reusedRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *reusedRecorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}
