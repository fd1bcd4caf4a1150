package rest

import (
	"bytes"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// TestReadBodyPrealloc: a body is read whole whatever its declared length
// (shorter, longer than maxBodyPrealloc, undeclared), and a length
// declared far above what is sent sets aside no more than maxBodyPrealloc.
func TestReadBodyPrealloc(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3*maxBodyPrealloc+7)
	for _, c := range []struct {
		name     string
		body     []byte
		declared int64
	}{
		{"declared", []byte(`{"entries":[]}`), 14},
		{"undeclared", []byte(`{"entries":[]}`), -1},
		{"beyond the preallocation", big, int64(len(big))},
		{"announced 30 MiB, sent 2 bytes", []byte(`{}`), 30 << 20},
		{"empty", nil, 0},
	} {
		r := httptest.NewRequest("POST", "/", bytes.NewReader(c.body))
		r.ContentLength = c.declared
		r.Header.Set("Content-Type", "application/json")
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		got, err := readBody(r)
		runtime.ReadMemStats(&m1)
		if err != nil || !bytes.Equal(got, c.body) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", c.name, len(got), err, len(c.body))
		}
		if c.declared > int64(len(c.body)) {
			// Far below the declared 30 MiB; room above maxBodyPrealloc
			// for what the runtime (the race detector) allocates meanwhile.
			if n := m1.TotalAlloc - m0.TotalAlloc; n > 8*maxBodyPrealloc {
				t.Errorf("%s: %d bytes allocated, want at most %d", c.name, n, 8*maxBodyPrealloc)
			}
		}
	}
}

// TestReadBodyContentType: the fast path for "application/json" changes
// nothing of which types are taken.
func TestReadBodyContentType(t *testing.T) {
	for ct, ok := range map[string]bool{
		"": true, "application/json": true, "application/json; charset=utf-8": true, "Application/JSON": true,
		"application/merge-patch+json": true, "text/plain": false, "application/json;": true, "application/jsonx": false,
		"application/xml": false, "json": false,
	} {
		r := httptest.NewRequest("POST", "/", strings.NewReader(`{}`))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		_, err := readBody(r)
		if (err == nil) != ok {
			t.Errorf("Content-Type %q: err %v, want accepted %v", ct, err, ok)
		}
	}
}
