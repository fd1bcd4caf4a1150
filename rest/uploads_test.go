package rest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"runhub/store"
	"runhub/store/blob"
	"runhub/store/blob/s3test"
)

// uploadEnv is a server on the filesystem store (with a settable clock for
// its links) or on S3 (a real versitygw), with a small API body limit so
// that an upload larger than it shows uploads skip it.
type uploadEnv struct {
	*env
	clock *clock
	s3    *blob.S3 // nil on the filesystem
	fs    *blob.FS
}

const (
	testMaxBody   = 8 << 10
	testMaxUpload = 256 << 10
)

func newUploadEnv(t *testing.T, backend string, cfg func(*Config)) *uploadEnv {
	t.Helper()
	ue := &uploadEnv{clock: &clock{}}
	ue.clock.ns.Store(time.Now().UnixNano())
	dir := t.TempDir()
	signer, err := blob.LoadSigner(dir, ue.clock.now)
	if err != nil {
		t.Fatal(err)
	}
	var blobs blob.Store
	if backend == "s3" {
		if ue.s3, err = blob.NewS3(s3test.Start(t)); err != nil {
			t.Fatal(err)
		}
		blobs = ue.s3
	} else {
		if ue.fs, err = blob.NewFS(filepath.Join(dir, "blobs")); err != nil {
			t.Fatal(err)
		}
		blobs = ue.fs
	}
	ue.env = newEnv(t, func(c *Config) {
		c.Blobs, c.Files, c.Signer = blobs, ue.fs, signer
		c.MaxBodyBytes, c.MaxUploadBytes = testMaxBody, testMaxUpload
		if cfg != nil {
			cfg(c)
		}
	})
	return ue
}

// prepared is one item of a prepare_upload answer.
type prepared struct {
	ID            string          `json:"id"`
	Name          string          `json:"name"`
	Type          string          `json:"type"`
	Size          int64           `json:"size"`
	ContentType   string          `json:"content_type"`
	StoragePath   string          `json:"storage_path"`
	ExpiresIn     int             `json:"expires_in"`
	Metadata      json.RawMessage `json:"metadata"`
	PresignedPost struct {
		URL    string            `json:"url"`
		Fields map[string]string `json:"fields"`
	} `json:"presigned_post"`
}

func (ue *uploadEnv) prepare(f fixture, items ...map[string]any) []prepared {
	ue.t.Helper()
	res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/prepare_upload/"), Key: ue.writeKey,
		Body: map[string]any{"artifacts": items}})
	wantStatus(ue.t, res, http.StatusOK)
	var out struct{ Artifacts []prepared }
	if err := json.Unmarshal(res.body, &out); err != nil || len(out.Artifacts) != len(items) {
		ue.t.Fatalf("prepare_upload: %s", res)
	}
	return out.Artifacts
}

// formBody is the multipart form a client sends to presigned_post: the
// fields, then the file.
func formBody(fields map[string]string, file []byte) (string, *bytes.Buffer) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	fw, _ := mw.CreateFormFile("file", "upload.bin")
	fw.Write(file)
	mw.Close()
	return mw.FormDataContentType(), &buf
}

// postUpload sends file with p's form; the status and body.
func postUpload(t *testing.T, p prepared, file []byte) (int, []byte) {
	t.Helper()
	ct, body := formBody(p.PresignedPost.Fields, file)
	res, err := http.Post(p.PresignedPost.URL, ct, body)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

func (ue *uploadEnv) finalize(f fixture, items ...map[string]any) *resp {
	ue.t.Helper()
	return ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/finalize_upload/"), Key: ue.writeKey,
		Body: map[string]any{"artifacts": items}})
}

func finalizeItem(p prepared) map[string]any {
	return map[string]any{"id": p.ID, "name": p.Name, "type": p.Type, "storage_path": p.StoragePath, "content_type": p.ContentType}
}

// TestDirectUploads, on the filesystem store and on S3: prepare_upload
// hands out a storage path in the run's folder and a form (a signed runhub
// URL, or an S3 POST policy); the form takes a file larger than the API's
// body limit; finalize_upload adds it to the manifest (skill_bundle type,
// metadata kept from prepare); a retried finalize adds nothing twice;
// artifacts/download streams the exact bytes with the content type; each
// finalized artifact is one artifact event on the run's stream.
func TestDirectUploads(t *testing.T) {
	for _, backend := range []string{"fs", "s3"} {
		t.Run(backend, func(t *testing.T) {
			ue := newUploadEnv(t, backend, nil)
			f := ue.fixture()
			bundle := bytes.Repeat([]byte{0, 'P', 'K', 0xff, '\n'}, 20000) // 100 KB > testMaxBody
			notes := []byte("héllo")
			meta := `{"skill_name":"deploy","skill_source":"repo","content_sha256":"abc","bundle_format":"zip","schema_version":1}`
			ps := ue.prepare(f,
				map[string]any{"name": "skills/deploy.zip", "type": "skill_bundle", "size": len(bundle), "content_type": "application/zip",
					"metadata": json.RawMessage(meta)},
				map[string]any{"name": "nötes 100%.txt", "type": "context", "size": len(notes), "source": "agent"})
			runDir := "artifacts/project_" + strconv.FormatInt(ue.p1, 10) + "/task_" + f.task + "/run_" + f.run + "/"
			for i, p := range ps {
				if !strings.HasPrefix(p.StoragePath, runDir) || strings.Contains(p.StoragePath[len(runDir):], "/") ||
					p.ExpiresIn != 3600 || p.PresignedPost.URL == "" || len(p.ID) != 36 {
					t.Fatalf("prepared %d: %+v", i, p)
				}
			}
			if ps[0].ContentType != "application/zip" || ps[1].ContentType != "application/octet-stream" || !jsonEq(t, ps[0].Metadata, meta) {
				t.Errorf("prepared %+v", ps)
			}
			if backend == "s3" {
				if !strings.HasPrefix(ps[0].PresignedPost.URL, "http://127.0.0.1") || ps[0].PresignedPost.Fields["policy"] == "" {
					t.Errorf("not an S3 POST policy: %+v", ps[0].PresignedPost)
				}
				// S3 refuses a file of another size.
				if st, b := postUpload(t, ps[0], bundle[1:]); st/100 == 2 {
					t.Errorf("short file on S3: %d %s", st, b)
				}
			} else if !strings.HasPrefix(ps[0].PresignedPost.URL, ue.srv.URL+"/uploads/") || ps[0].PresignedPost.Fields["key"] != ps[0].StoragePath {
				t.Errorf("not a runhub upload form: %+v", ps[0].PresignedPost)
			}
			// Nothing uploaded yet: finalize refuses, and adds nothing.
			res := ue.finalize(f, finalizeItem(ps[1]), finalizeItem(ps[0]))
			wantHandlerError(t, res, http.StatusBadRequest, "Artifact 0 has not been uploaded.")
			for i, file := range [][]byte{bundle, notes} {
				if st, b := postUpload(t, ps[i], file); st/100 != 2 {
					t.Fatalf("upload %d: %d %s", i, st, b)
				}
			}
			res = ue.finalize(f, finalizeItem(ps[0]), finalizeItem(ps[1]))
			wantStatus(t, res, http.StatusOK)
			var manifest struct{ Artifacts []map[string]any }
			json.Unmarshal(res.body, &manifest)
			if len(manifest.Artifacts) != 2 {
				t.Fatalf("manifest %s", res.body)
			}
			m0, m1 := manifest.Artifacts[0], manifest.Artifacts[1]
			if m0["id"] != ps[0].ID || m0["type"] != "skill_bundle" || m0["size"] != float64(len(bundle)) ||
				m0["storage_path"] != ps[0].StoragePath || m0["content_type"] != "application/zip" || !jsonEq(t, m0["metadata"], meta) {
				t.Errorf("entry 0: %v", m0)
			}
			if m1["source"] != "agent" || m1["size"] != float64(len(notes)) || m1["metadata"] != nil || m1["uploaded_at"] == nil {
				t.Errorf("entry 1: %v", m1)
			}
			// A retried finalize: the same manifest, nothing added twice.
			again := ue.finalize(f, finalizeItem(ps[0]), finalizeItem(ps[1]))
			wantStatus(t, again, http.StatusOK)
			if !jsonEq(t, json.RawMessage(again.body), string(res.body)) {
				t.Errorf("retried finalize changed the manifest:\n%s\n%s", again.body, res.body)
			}
			for i, want := range [][]byte{bundle, notes} {
				res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/download/"), Key: ue.readKey,
					Body: map[string]string{"storage_path": ps[i].StoragePath}})
				wantStatus(t, res, http.StatusOK)
				if !bytes.Equal(res.body, want) || res.header.Get("Content-Type") != ps[i].ContentType ||
					res.header.Get("Content-Length") != strconv.Itoa(len(want)) {
					t.Errorf("download %d: %d bytes, %q", i, len(res.body), res.header.Get("Content-Type"))
				}
			}
			n := 0
			for _, e := range ue.events(f.run) {
				if e.Kind == store.KindArtifact {
					n++
				}
			}
			if n != 2 {
				t.Errorf("%d artifact events, want 2", n)
			}
		})
	}
}

// TestDirectUploadRefusals: bad prepare bodies are 400 validation errors
// (size 0 or above --max-upload-bytes, an unknown type, metadata that is
// not an object); finalize refuses an unknown id, another run's id, a
// storage_path other than the prepared one and (all or nothing) a batch
// with one item missing; download of a path not in this run's manifest is
// 404 {"error"}.
func TestDirectUploadRefusals(t *testing.T) {
	ue := newUploadEnv(t, "fs", nil)
	f, g := ue.fixture(), ue.fixture()
	for body, attr := range map[string]string{
		`{"artifacts":[{"name":"a","type":"plan","size":0}]}`:                                "artifacts.0.size",
		fmt.Sprintf(`{"artifacts":[{"name":"a","type":"plan","size":%d}]}`, testMaxUpload+1): "artifacts.0.size",
		`{"artifacts":[{"name":"a","type":"plan","size":1.5}]}`:                              "artifacts",
		`{"artifacts":[{"name":"a","type":"plan"}]}`:                                         "artifacts",
		`{"artifacts":[{"name":"a","type":"nonsense","size":1}]}`:                            "artifacts.0.type",
		`{"artifacts":[{"name":"a","type":"plan","size":1,"metadata":[1]}]}`:                 "artifacts.0.metadata",
		`{"artifacts":[]}`: "artifacts",
	} {
		res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/prepare_upload"), Key: ue.writeKey, Body: body})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", attr)
	}
	// The largest size is accepted.
	ue.prepare(f, map[string]any{"name": "big", "type": "output", "size": testMaxUpload})

	ps := ue.prepare(f, map[string]any{"name": "a.txt", "type": "output", "size": 3}, map[string]any{"name": "b.txt", "type": "output", "size": 3})
	if st, b := postUpload(t, ps[0], []byte("abc")); st != http.StatusNoContent {
		t.Fatalf("upload: %d %s", st, b)
	}
	// b.txt is not uploaded: neither joins the manifest.
	res := ue.finalize(f, finalizeItem(ps[0]), finalizeItem(ps[1]))
	wantHandlerError(t, res, http.StatusBadRequest, "Artifact 1 has not been uploaded.")
	if arts := obj(t, ue.do(req{Method: "GET", Path: f.path(ue.env, "/"), Key: ue.readKey}))["artifacts"].([]any); len(arts) != 0 {
		t.Errorf("manifest after a refused finalize: %v", arts)
	}
	other := finalizeItem(ps[0])
	other["storage_path"] = ps[1].StoragePath
	res = ue.finalize(f, other)
	wantHandlerError(t, res, http.StatusBadRequest, "Artifact 0 was not prepared for this run at this storage_path.")
	unknown := finalizeItem(ps[0])
	unknown["id"] = "0190f6b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"
	wantHandlerError(t, ue.finalize(f, unknown), http.StatusBadRequest, "No upload with this id was prepared for this run.")
	// Prepared for run f, finalized on run g.
	wantHandlerError(t, ue.finalize(g, finalizeItem(ps[0])), http.StatusBadRequest, "No upload with this id was prepared for this run.")
	bad := finalizeItem(ps[0])
	bad["id"] = "../../x"
	wantAPIError(t, ue.finalize(f, bad), http.StatusBadRequest, "validation_error", "artifacts.0.id")
	wantStatus(t, ue.finalize(f, finalizeItem(ps[0])), http.StatusOK)

	for _, c := range []struct {
		f    fixture
		path string
	}{{f, ps[1].StoragePath}, {g, ps[0].StoragePath}, {f, "artifacts/nope"}} {
		res := ue.do(req{Method: "POST", Path: c.f.path(ue.env, "/artifacts/download"), Key: ue.readKey, Body: map[string]string{"storage_path": c.path}})
		wantHandlerError(t, res, http.StatusNotFound, "Artifact not found on this run")
	}
	res = ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/download"), Key: ue.readKey, Body: `{"storage_path": 1}`})
	wantAPIError(t, res, http.StatusBadRequest, "validation_error", "storage_path")
	// Scopes: a read key cannot prepare or finalize.
	res = ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/prepare_upload"), Key: ue.readKey, Body: `{"artifacts":[]}`})
	wantStatus(t, res, http.StatusForbidden)
}

// TestUploadForm: the filesystem store's upload form stores exactly the
// signed size (one byte more or less: 400 {"error"}, nothing stored);
// refuses a changed or expired link (403), a form whose key is another
// (400), a body that is not a form (400), and a body announced above
// --max-upload-bytes plus the form's overhead (413) before reading it.
func TestUploadForm(t *testing.T) {
	ue := newUploadEnv(t, "fs", nil)
	f := ue.fixture()
	p := ue.prepare(f, map[string]any{"name": "a.bin", "type": "output", "size": 10})[0]
	file := []byte("0123456789")
	stored := func() bool {
		_, err := ue.fs.Stat(t.Context(), p.StoragePath)
		return err == nil
	}
	post := func(u, ct string, body io.Reader, header ...string) *resp {
		hr, _ := http.NewRequest("POST", u, body)
		hr.Header.Set("Content-Type", ct)
		for i := 0; i+1 < len(header); i += 2 {
			hr.Header.Set(header[i], header[i+1])
		}
		res, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return &resp{status: res.StatusCode, header: res.Header, body: b}
	}
	send := func(p prepared, file []byte) *resp {
		ct, body := formBody(p.PresignedPost.Fields, file)
		return post(p.PresignedPost.URL, ct, body)
	}
	wantErrBody := func(what string, res *resp, status int) {
		t.Helper()
		checkErrorShape(t, what, res)
		if res.status != status {
			t.Errorf("%s: %s, want %d", what, res, status)
		}
	}
	for _, n := range []int{9, 11} {
		res := send(p, bytes.Repeat([]byte("x"), n))
		wantErrBody(fmt.Sprintf("%d bytes", n), res, http.StatusBadRequest)
		if !strings.Contains(string(res.body), `"error"`) {
			t.Errorf("%d bytes: %s", n, res)
		}
	}
	if stored() {
		t.Fatal("a refused upload was stored")
	}
	for _, bad := range []string{
		strings.Replace(p.PresignedPost.URL, "size=10", "size=11", 1),
		strings.Replace(p.PresignedPost.URL, "sig=", "sig=A", 1),
		strings.Replace(p.PresignedPost.URL, "run_", "run-", 1),
	} {
		q := p
		q.PresignedPost.URL = bad
		wantErrBody("changed link", send(q, file), http.StatusForbidden)
	}
	q := p
	q.PresignedPost.Fields = map[string]string{"key": p.StoragePath + "x"}
	wantErrBody("other key", send(q, file), http.StatusBadRequest)
	wantErrBody("not a form", post(p.PresignedPost.URL, "application/json", strings.NewReader(`{}`)), http.StatusBadRequest)
	// Announced above the limit: refused before a byte is read. The client
	// waits for "100 Continue" as a large upload's sender should (else the
	// body it is still writing may meet the closed connection's reset
	// before it reads the answer).
	ct, body := formBody(nil, bytes.Repeat([]byte("x"), testMaxUpload+blob.MaxFormOverhead))
	wantErrBody("too large", post(p.PresignedPost.URL, ct, bytes.NewReader(body.Bytes()), "Expect", "100-continue"), http.StatusRequestEntityTooLarge)
	if stored() {
		t.Fatal("a refused upload was stored")
	}
	if st, b := postUpload(t, p, file); st != http.StatusNoContent {
		t.Fatalf("upload: %d %s", st, b)
	}
	if !stored() {
		t.Fatal("not stored")
	}
	ue.clock.advance(PresignTTL + time.Second)
	wantErrBody("expired link", send(p, file), http.StatusForbidden)
}

// TestUploadFormSlowBody: an upload that keeps sending may take longer
// than the body timeout (here 1 s; the upload takes about 1.8 s, in pauses
// of 300 ms, well inside the three quarters of the timeout a pause is
// sure to get, even on a loaded machine), since each read pushes the
// deadline on; one that pauses for longer than the body timeout (2.5 s)
// is cut (408) and stores nothing.
func TestUploadFormSlowBody(t *testing.T) {
	ue := newUploadEnv(t, "fs", func(c *Config) { c.Timeouts.Body = time.Second })
	f := ue.fixture()
	const chunks, chunk = 6, 1000
	ps := ue.prepare(f, map[string]any{"name": "slow.bin", "type": "output", "size": chunks * chunk},
		map[string]any{"name": "stalled.bin", "type": "output", "size": chunks * chunk})
	send := func(p prepared, pause func(i int) time.Duration) (int, []byte) {
		ct, body := formBody(p.PresignedPost.Fields, bytes.Repeat([]byte("s"), chunks*chunk))
		all := body.Bytes()
		pr, pw := io.Pipe()
		go func() {
			// The head of the form, then the file in chunks.
			head := len(all) - chunks*chunk - 100
			pw.Write(all[:head])
			rest := all[head:]
			for i := 0; len(rest) > 0; i++ {
				time.Sleep(pause(i))
				n := min(chunk, len(rest))
				if _, err := pw.Write(rest[:n]); err != nil {
					pw.CloseWithError(err)
					return
				}
				rest = rest[n:]
			}
			pw.Close()
		}()
		hr, _ := http.NewRequest("POST", p.PresignedPost.URL, pr)
		hr.Header.Set("Content-Type", ct)
		res, err := http.DefaultClient.Do(hr)
		if err != nil {
			return 0, []byte(err.Error())
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	if st, b := send(ps[0], func(int) time.Duration { return 300 * time.Millisecond }); st != http.StatusNoContent {
		t.Fatalf("slow upload: %d %s", st, b)
	}
	st, b := send(ps[1], func(i int) time.Duration {
		if i == 2 {
			return 2500 * time.Millisecond
		}
		return 0
	})
	if st != http.StatusRequestTimeout && st != 0 {
		t.Errorf("stalled upload: %d %s, want 408 or a cut connection", st, b)
	}
	if _, err := ue.fs.Stat(t.Context(), ps[1].StoragePath); err == nil {
		t.Error("a stalled upload was stored")
	}
}

// TestUploadResponsesMatchSchemas: the answers of prepare_upload (on both
// stores) and finalize_upload match the OpenAPI document's schemas.
func TestUploadResponsesMatchSchemas(t *testing.T) {
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(openAPIDocument))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	const loc = "urn:runhub:openapi"
	if err := c.AddResource(loc, raw); err != nil {
		t.Fatal(err)
	}
	check := func(name string, body []byte) {
		t.Helper()
		sch, err := c.Compile(loc + "#/components/schemas/" + name)
		if err != nil {
			t.Fatalf("compile %s: %v", name, err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("not JSON: %s", body)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("body does not match %s: %v\n%s", name, err, body)
		}
	}
	for _, backend := range []string{"fs", "s3"} {
		ue := newUploadEnv(t, backend, nil)
		f := ue.fixture()
		res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts/prepare_upload"), Key: ue.writeKey,
			Body: `{"artifacts":[{"name":"s.zip","type":"skill_bundle","size":3,"metadata":{"skill_name":"s"}},{"name":"n","type":"plan","size":1,"source":"agent"}]}`})
		wantStatus(t, res, http.StatusOK)
		check("PreparedUploads", res.body)
		var ps struct{ Artifacts []prepared }
		json.Unmarshal(res.body, &ps)
		for i, file := range []string{"abc", "x"} {
			if st, b := postUpload(t, ps.Artifacts[i], []byte(file)); st/100 != 2 {
				t.Fatalf("%s: upload: %d %s", backend, st, b)
			}
		}
		res = ue.finalize(f, finalizeItem(ps.Artifacts[0]), finalizeItem(ps.Artifacts[1]))
		wantStatus(t, res, http.StatusOK)
		check("ArtifactManifest", res.body)
	}
}

// TestFinalizeRace: eight finalizes of one upload at once (as retries on
// several nodes would be) all succeed and add it to the manifest once,
// with one artifact event.
func TestFinalizeRace(t *testing.T) {
	ue := newUploadEnv(t, "fs", nil)
	f := ue.fixture()
	p := ue.prepare(f, map[string]any{"name": "a", "type": "output", "size": 1})[0]
	if st, b := postUpload(t, p, []byte("x")); st != http.StatusNoContent {
		t.Fatalf("upload: %d %s", st, b)
	}
	const n = 8
	codes := make(chan int, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			b, _ := json.Marshal(map[string]any{"artifacts": []any{finalizeItem(p)}})
			hr, _ := http.NewRequest("POST", ue.srv.URL+f.path(ue.env, "/artifacts/finalize_upload"), bytes.NewReader(b))
			hr.Header.Set("Authorization", "Bearer "+ue.writeKey)
			res, err := ue.client.Do(hr)
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			codes <- res.StatusCode
		}()
	}
	close(start)
	for range n {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("finalize: %d", c)
		}
	}
	arts := obj(t, ue.do(req{Method: "GET", Path: f.path(ue.env, "/"), Key: ue.readKey}))["artifacts"].([]any)
	events := 0
	for _, e := range ue.events(f.run) {
		if e.Kind == store.KindArtifact {
			events++
		}
	}
	if len(arts) != 1 || events != 1 {
		t.Errorf("%d manifest entries and %d artifact events, want 1 and 1", len(arts), events)
	}
}

// TestUploadFormKeepsConnection: after a stored upload the server reads
// the rest of the form (here a 16 KiB field after the file, which S3
// ignores, then the closing boundary), so the client's connection carries
// its next request instead of being closed.
func TestUploadFormKeepsConnection(t *testing.T) {
	ue := newUploadEnv(t, "fs", nil)
	f := ue.fixture()
	ps := ue.prepare(f, map[string]any{"name": "a", "type": "output", "size": 3}, map[string]any{"name": "b", "type": "output", "size": 3})
	conns := 0
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for _, p := range ps {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		fw, _ := mw.CreateFormFile("file", "f")
		fw.Write([]byte("abc"))
		mw.WriteField("after", strings.Repeat("x", 16<<10))
		mw.Close()
		ct := mw.FormDataContentType()
		hr, _ := http.NewRequest("POST", p.PresignedPost.URL, &body)
		hr.Header.Set("Content-Type", ct)
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				conns++
			}
		}}
		res, err := client.Do(hr.WithContext(httptrace.WithClientTrace(hr.Context(), trace)))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusNoContent || res.Header.Get("Connection") == "close" {
			t.Fatalf("upload: %d, Connection %q", res.StatusCode, res.Header.Get("Connection"))
		}
	}
	if conns != 1 {
		t.Errorf("%d connections for two uploads, want 1", conns)
	}
}

// TestInlineArtifactMetadata: POST .../artifacts takes the skill_bundle
// type and a metadata object, kept on the manifest entry; metadata that is
// not an object, or is larger than 16 KiB, is 400; an entry without
// metadata has none.
func TestInlineArtifactMetadata(t *testing.T) {
	ue := newUploadEnv(t, "fs", func(c *Config) { c.MaxBodyBytes = 0 })
	f := ue.fixture()
	meta := `{"skill_name":"deploy","skill_source":"user","content_sha256":"00ff","bundle_format":"zip","schema_version":1}`
	res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts"), Key: ue.writeKey, Body: `{"artifacts":[
		{"name":"deploy.zip","type":"skill_bundle","content":"UEs=","content_encoding":"base64","metadata":` + meta + `},
		{"name":"plain.txt","type":"plan","content":"x","metadata":null}]}`})
	wantStatus(t, res, http.StatusOK)
	var m struct{ Artifacts []map[string]any }
	json.Unmarshal(res.body, &m)
	if len(m.Artifacts) != 2 || m.Artifacts[0]["type"] != "skill_bundle" || !jsonEq(t, m.Artifacts[0]["metadata"], meta) {
		t.Fatalf("manifest %s", res.body)
	}
	if _, ok := m.Artifacts[1]["metadata"]; ok {
		t.Errorf("metadata on an entry without: %v", m.Artifacts[1])
	}
	big := `{"k":"` + strings.Repeat("x", 16<<10) + `"}`
	for _, md := range []string{`[1]`, `"s"`, `1`, big} {
		res := ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts"), Key: ue.writeKey,
			Body: `{"artifacts":[{"name":"a","type":"plan","content":"x","metadata":` + md + `}]}`})
		wantAPIError(t, res, http.StatusBadRequest, "validation_error", "artifacts.0.metadata")
	}
	// At the limit: accepted.
	atLimit := `{"k":"` + strings.Repeat("x", 16<<10-8) + `"}`
	res = ue.do(req{Method: "POST", Path: f.path(ue.env, "/artifacts"), Key: ue.writeKey,
		Body: `{"artifacts":[{"name":"a","type":"plan","content":"x","metadata":` + atLimit + `}]}`})
	wantStatus(t, res, http.StatusOK)
}
