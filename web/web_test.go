package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/mux"
)

// TestPagesCannotBeFramed: both viewer pages forbid framing by any site
// (frame-ancestors 'none', X-Frame-Options DENY) and keep the rest of
// their policy.
func TestPagesCannotBeFramed(t *testing.T) {
	r := mux.NewRouter()
	Mount(r)
	srv := httptest.NewServer(r)
	defer srv.Close()
	for _, path := range []string{"/", "/runs/0b9f3c1e-6a55-4c55-9b8e-3f1d2a4c5e6f"} {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		csp := res.Header.Get("Content-Security-Policy")
		if res.StatusCode != 200 || !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") ||
			!strings.Contains(csp, "default-src 'self'") || res.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: %d, CSP %q, X-Frame-Options %q", path, res.StatusCode, csp, res.Header.Get("X-Frame-Options"))
		}
	}
}
