package rest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/blob"
)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// failingBlobs fails the nth Put (1-based), to test all-or-nothing.
type failingBlobs struct {
	*blob.FS
	n, puts int
}

func (f *failingBlobs) Put(ctx context.Context, key string, data []byte, ct string) error {
	f.puts++
	if f.puts == f.n {
		return errors.New("disk full")
	}
	return f.FS.Put(ctx, key, data, ct)
}

type artifactEnv struct {
	*env
	dir   string
	clock *clock
	fail  *failingBlobs
}

func newArtifactEnv(t *testing.T) *artifactEnv {
	t.Helper()
	ae := &artifactEnv{dir: t.TempDir(), clock: &clock{}}
	ae.clock.ns.Store(time.Now().UnixNano())
	fs, err := blob.NewFS(filepath.Join(ae.dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := blob.LoadSigner(ae.dir, ae.clock.now)
	if err != nil {
		t.Fatal(err)
	}
	ae.fail = &failingBlobs{FS: fs}
	ae.env = newEnv(t, func(c *Config) { c.Blobs, c.Files, c.Signer = ae.fail, fs, signer })
	return ae
}

// files lists every blob file under the store.
func (ae *artifactEnv) files(t *testing.T) []string {
	var out []string
	filepath.Walk(filepath.Join(ae.dir, "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func download(t *testing.T, u string) (int, http.Header, []byte) {
	t.Helper()
	res, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, b
}

// TestArtifactsUploadPresignDownload: utf-8 and base64 artifacts are stored,
// presigned and downloaded byte for byte with their content type; a link
// with one character changed, or used after its hour, is 403; a path not
// in the manifest is 404; a name with directories stays inside the run's
// folder.
func TestArtifactsUploadPresignDownload(t *testing.T) {
	ae := newArtifactEnv(t)
	f := ae.fixture()
	bin := []byte{0, 1, 2, 0xff, 0xfe, '\n', 'x'}
	body := map[string]any{"artifacts": []map[string]any{
		{"name": "plan.md", "type": "plan", "content": "# Plan\n\nnaïve ✓", "content_type": "text/markdown"},
		{"name": "../../etc/passwd", "type": "artifact", "content": base64.StdEncoding.EncodeToString(bin), "content_encoding": "base64"},
	}}
	res := ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts/"), Key: ae.writeKey, Body: body})
	wantStatus(t, res, http.StatusOK)
	var manifest struct{ Artifacts []map[string]any }
	json.Unmarshal(res.body, &manifest)
	if len(manifest.Artifacts) != 2 {
		t.Fatalf("manifest %s", res.body)
	}
	runDir := "artifacts/project_" + strconv.FormatInt(ae.p1, 10) + "/task_" + f.task + "/run_" + f.run + "/"
	want := [][]byte{[]byte("# Plan\n\nnaïve ✓"), bin}
	wantCT := []string{"text/markdown", "application/octet-stream"}
	for i, m := range manifest.Artifacts {
		sp, _ := m["storage_path"].(string)
		if !strings.HasPrefix(sp, runDir) || strings.Contains(sp[len(runDir):], "/") || strings.Contains(sp, "..") {
			t.Fatalf("storage_path %q is not a file directly in %s", sp, runDir)
		}
		if m["size"] != float64(len(want[i])) || m["content_type"] != wantCT[i] || m["id"] == "" || m["uploaded_at"] == "" {
			t.Errorf("entry %v", m)
		}
		res := ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts/presign/"), Key: ae.readKey, Body: map[string]string{"storage_path": sp}})
		wantStatus(t, res, http.StatusOK)
		var p struct {
			URL       string `json:"url"`
			ExpiresIn int    `json:"expires_in"`
		}
		json.Unmarshal(res.body, &p)
		if p.ExpiresIn != 3600 {
			t.Errorf("expires_in %d", p.ExpiresIn)
		}
		st, h, got := download(t, p.URL)
		if st != http.StatusOK || string(got) != string(want[i]) || h.Get("Content-Type") != wantCT[i] ||
			!strings.HasPrefix(h.Get("Content-Disposition"), "attachment") {
			t.Fatalf("download %d: %d %q %q %q", i, st, got, h.Get("Content-Type"), h.Get("Content-Disposition"))
		}
		// One character changed anywhere in the query or the path: 403.
		u, _ := url.Parse(p.URL)
		for _, bad := range []string{
			strings.Replace(p.URL, "sig=", "sig=A", 1),
			strings.Replace(p.URL, "exp=", "exp=9", 1),
			strings.Replace(p.URL, "ct=", "ct=x", 1),
			u.Scheme + "://" + u.Host + strings.Replace(u.Path, "run_", "run-", 1) + "?" + u.RawQuery,
		} {
			if st, _, _ := download(t, bad); st != http.StatusForbidden {
				t.Errorf("changed link %s: %d, want 403", bad, st)
			}
		}
		if i == 1 {
			ae.clock.advance(PresignTTL + time.Second)
			if st, _, _ := download(t, p.URL); st != http.StatusForbidden {
				t.Errorf("expired link: %d, want 403", st)
			}
		}
	}
	if n := len(ae.files(t)); n != 2 {
		t.Errorf("%d blob files, want 2", n)
	}
	res = ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts/presign"), Key: ae.readKey, Body: map[string]string{"storage_path": runDir + "nope"}})
	wantHandlerError(t, res, http.StatusNotFound, "Artifact not found on this run")
	// Another run's artifact is not this run's.
	g := ae.fixture()
	res = ae.do(req{Method: "POST", Path: g.path(ae.env, "/artifacts/presign"), Key: ae.readKey,
		Body: map[string]string{"storage_path": manifest.Artifacts[0]["storage_path"].(string)}})
	wantHandlerError(t, res, http.StatusNotFound, "Artifact not found on this run")
	// The stream carries artifact events.
	n := 0
	for _, e := range ae.events(f.run) {
		if e.Kind == store.KindArtifact {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d artifact events, want 2", n)
	}
}

// TestArtifactsAllOrNothing: an invalid third artifact, or a failed third
// blob write, stores none of them and leaves the manifest as it was.
func TestArtifactsAllOrNothing(t *testing.T) {
	ae := newArtifactEnv(t)
	f := ae.fixture()
	item := func(name, typ string) map[string]any {
		return map[string]any{"name": name, "type": typ, "content": "x"}
	}
	res := ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts"), Key: ae.writeKey,
		Body: map[string]any{"artifacts": []any{item("a", "plan")}}})
	wantStatus(t, res, http.StatusOK)
	before := string(res.body)

	res = ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts"), Key: ae.writeKey,
		Body: map[string]any{"artifacts": []any{item("b", "plan"), item("c", "plan"), item("d", "nonsense")}}})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "artifacts.2.type")

	ae.fail.n, ae.fail.puts = 4, 1 // the next three Puts: ok, ok, fail
	b, _ := json.Marshal(map[string]any{"artifacts": []any{item("b", "plan"), item("c", "plan"), item("d", "plan")}})
	hr, _ := http.NewRequest("POST", ae.srv.URL+f.path(ae.env, "/artifacts"), strings.NewReader(string(b)))
	hr.Header.Set("Authorization", "Bearer "+ae.writeKey)
	hr.Header.Set("Content-Type", "application/json")
	hres, err := ae.client.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := io.ReadAll(hres.Body)
	hres.Body.Close()
	if hres.StatusCode != http.StatusInternalServerError || strings.Contains(string(hb), "disk full") {
		t.Fatalf("failed blob write: %d %s", hres.StatusCode, hb)
	}
	if n := len(ae.files(t)); n != 1 {
		t.Errorf("%d blob files after the failures, want 1", n)
	}
	var run map[string]any
	res = ae.do(req{Method: "GET", Path: f.path(ae.env, "/"), Key: ae.readKey})
	json.Unmarshal(res.body, &run)
	got, _ := json.Marshal(map[string]any{"artifacts": run["artifacts"]})
	var a any
	json.Unmarshal([]byte(before), &a)
	if ja, _ := json.Marshal(a); string(ja) != string(got) {
		t.Errorf("manifest changed:\nbefore %s\nafter  %s", ja, got)
	}

	for body, attr := range map[string]string{
		`{"artifacts":[]}`:                                                                       "artifacts",
		`{"artifacts":[{"name":"a","type":"plan"}]}`:                                             "artifacts",
		`{"artifacts":[{"name":"","type":"plan","content":"x"}]}`:                                "artifacts.0.name",
		`{"artifacts":[{"name":"a","type":"plan","content":"%%%","content_encoding":"base64"}]}`: "artifacts.0.content",
		`{"artifacts":[{"name":"a","type":"plan","content":"x","content_encoding":"rot13"}]}`:    "artifacts.0.content_encoding",
		`{"artifacts":[{"name":1,"type":"plan","content":"x"}]}`:                                 "artifacts",
		`{"artifacts":"x"}`: "artifacts",
	} {
		res := ae.do(req{Method: "POST", Path: f.path(ae.env, "/artifacts"), Key: ae.writeKey, Body: body})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", attr)
	}
}

// TestLogURL: the run's log_url downloads the same bytes as GET .../logs
// without an API key, and stops working after an hour or when changed.
func TestLogURL(t *testing.T) {
	ae := newArtifactEnv(t)
	f := ae.fixture()
	ae.appendLog(f, map[string]any{"type": "console", "message": "one"}, map[string]any{"type": "console", "message": "two ✓"})
	res := ae.do(req{Method: "GET", Path: f.path(ae.env, "/"), Key: ae.readKey})
	var run struct {
		LogURL *string `json:"log_url"`
	}
	json.Unmarshal(res.body, &run)
	if run.LogURL == nil || !strings.HasPrefix(*run.LogURL, ae.srv.URL+"/logs/"+f.run+".jsonl?") {
		t.Fatalf("log_url %v", run.LogURL)
	}
	want := ae.do(req{Method: "GET", Path: f.path(ae.env, "/logs"), Key: ae.readKey})
	st, h, got := download(t, *run.LogURL)
	if st != http.StatusOK || string(got) != string(want.body) || h.Get("Content-Type") != "application/jsonl" || len(got) == 0 {
		t.Fatalf("log_url: %d %q, want %q", st, got, want.body)
	}
	if st, _, _ := download(t, strings.Replace(*run.LogURL, f.run, ae.fixture().run, 1)); st != http.StatusForbidden {
		t.Errorf("another run's id in the link: %d, want 403", st)
	}
	ae.clock.advance(LogURLTTL + time.Second)
	if st, _, _ := download(t, *run.LogURL); st != http.StatusForbidden {
		t.Errorf("expired log_url: %d, want 403", st)
	}
}
