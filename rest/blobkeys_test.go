package rest

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"runhub/store/blob"
)

// TestArtifactLongNameRoundTrip: an artifact whose name has the contract's
// maximum of 255 characters (ASCII, or two-byte UTF-8) is stored and
// downloads byte for byte; its blob key fits the filesystem's 255-byte
// file names.
func TestArtifactLongNameRoundTrip(t *testing.T) {
	ae := newArtifactEnv(t)
	f := ae.fixture()
	for _, name := range []string{strings.Repeat("n", 255), strings.Repeat("é", 255)} {
		body := map[string]any{"artifacts": []map[string]any{{"name": name, "type": "artifact", "content": "long " + name[:4]}}}
		res := ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts/"), Key: ae.writeKey, Body: body})
		wantStatus(t, res, http.StatusOK)
		var manifest struct{ Artifacts []map[string]any }
		json.Unmarshal(res.body, &manifest)
		m := manifest.Artifacts[len(manifest.Artifacts)-1]
		if m["name"] != name {
			t.Errorf("manifest name %q", m["name"])
		}
		res = ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts/presign/"), Key: ae.readKey, Body: map[string]any{"storage_path": m["storage_path"]}})
		wantStatus(t, res, http.StatusOK)
		var p struct{ URL string }
		json.Unmarshal(res.body, &p)
		if st, _, got := download(t, p.URL); st != http.StatusOK || string(got) != "long "+name[:4] {
			t.Errorf("download: %d %q", st, got)
		}
	}
}

// TestBlobDownloadTraversal: even a correctly signed link whose key climbs
// out of the blob root (dot segments sent encoded, or an absolute key)
// reads nothing outside it: 404, never the file.
func TestBlobDownloadTraversal(t *testing.T) {
	ae := newArtifactEnv(t)
	signer, err := blob.LoadSigner(ae.dir, ae.clock.now) // the server's secret
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, sent string }{
		{"../url-secret", "..%2Furl-secret"},
		{"../url-secret", "%2e%2e/url-secret"},
		{"../url-secret", "%2E%2E%2Furl-secret"},
		{"a/../../url-secret", "a/%2e%2e/%2e%2e/url-secret"},
		{"/" + ae.dir + "/url-secret", "%2F" + url.PathEscape(ae.dir) + "/url-secret"},
	} {
		q := signer.Sign(http.MethodGet, "/blobs/"+tc.key, url.Values{"ct": {"text/plain"}, "name": {"x"}}, PresignTTL)
		st, _, got := download(t, ae.srv.URL+"/blobs/"+tc.sent+"?"+q.Encode())
		if st != http.StatusNotFound {
			t.Errorf("GET /blobs/%s (signed for %q): %d %q, want 404", tc.sent, tc.key, st, got)
		}
	}
}
