package rest

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"runhub/store/blob"
	"runhub/store/blob/s3test"
)

// TestArtifactsOnS3: against a real S3-compatible server (versitygw), the
// artifacts are stored, presigned with S3 presigned GETs and downloaded
// byte for byte with their content type; a changed URL or an expired one
// (the link lives 2 s here) is refused with 403; a path not in the manifest
// is 404; a name with directories stays inside the run's folder.
func TestArtifactsOnS3(t *testing.T) {
	cfg := s3test.Start(t)
	s3, err := blob.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Blobs, c.PresignTTL = s3, 2*time.Second })
	f := e.fixture()
	bin := []byte{0, 1, 2, 0xff, 0xfe, '\r', '\n'}
	res := e.do(req{Method: "POST", Path: f.path(e, "/artifacts"), Key: e.writeKey, Body: map[string]any{"artifacts": []map[string]any{
		{"name": "notes.txt", "type": "context", "content": "héllo\nworld"},
		{"name": "../../etc/passwd", "type": "output", "content": base64.StdEncoding.EncodeToString(bin), "content_encoding": "base64", "content_type": "image/png"},
	}}})
	wantStatus(t, res, http.StatusOK)
	var manifest struct{ Artifacts []map[string]any }
	json.Unmarshal(res.body, &manifest)
	runDir := "artifacts/project_" + strconv.FormatInt(e.p1, 10) + "/task_" + f.task + "/run_" + f.run + "/"
	want := [][]byte{[]byte("héllo\nworld"), bin}
	wantCT := []string{"text/plain; charset=utf-8", "image/png"}
	var urls []string
	for i, m := range manifest.Artifacts {
		sp := m["storage_path"].(string)
		if !strings.HasPrefix(sp, runDir) || strings.Contains(sp[len(runDir):], "/") {
			t.Fatalf("storage_path %q is not directly in %s", sp, runDir)
		}
		res := e.do(req{Method: "POST", Path: f.path(e, "/artifacts/presign"), Key: e.readKey, Body: map[string]string{"storage_path": sp}})
		wantStatus(t, res, http.StatusOK)
		var p struct{ URL string }
		json.Unmarshal(res.body, &p)
		if !strings.HasPrefix(p.URL, cfg.Endpoint+"/"+cfg.Bucket+"/") || !strings.Contains(p.URL, "X-Amz-Signature=") {
			t.Fatalf("not an S3 presigned URL: %s", p.URL)
		}
		st, h, got := download(t, p.URL)
		if st != http.StatusOK || string(got) != string(want[i]) || h.Get("Content-Type") != wantCT[i] {
			t.Fatalf("download %d: %d %q %q", i, st, got, h.Get("Content-Type"))
		}
		i := strings.Index(p.URL, "X-Amz-Signature=") + len("X-Amz-Signature=")
		c := byte('0')
		if p.URL[i] == '0' {
			c = '1'
		}
		if st, _, _ := download(t, p.URL[:i]+string(c)+p.URL[i+1:]); st != http.StatusForbidden {
			t.Errorf("changed URL: %d, want 403", st)
		}
		urls = append(urls, p.URL)
	}
	res = e.do(req{Method: "POST", Path: f.path(e, "/artifacts/presign"), Key: e.readKey, Body: map[string]string{"storage_path": runDir + "nope"}})
	wantHandlerError(t, res, http.StatusNotFound, "Artifact not found on this run")
	time.Sleep(3 * time.Second)
	for _, u := range urls {
		if st, _, _ := download(t, u); st != http.StatusForbidden {
			t.Errorf("expired URL: %d, want 403", st)
		}
	}
}
