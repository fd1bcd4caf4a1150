package blob_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
)

// newFS makes a blob root inside a data directory that also holds a
// secret file beside the root, the target of every traversal attempt.
func newFS(t *testing.T) (*blob.FS, string, string) {
	t.Helper()
	data := t.TempDir()
	secret := filepath.Join(data, "url-secret")
	if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(data, "blobs")
	f, err := blob.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	return f, root, data
}

// TestFSRefusesEscapingKeys: no key reaches a file outside the root, for
// reading, writing or deleting; dot segments, absolute paths, backslashes,
// empty segments and NUL are refused outright, and percent-encodings are
// never decoded (they are ordinary characters of a name inside the root).
func TestFSRefusesEscapingKeys(t *testing.T) {
	ctx := context.Background()
	f, root, data := newFS(t)
	refused := []string{
		"", "..", "../url-secret", "../../etc/passwd", "a/../../url-secret", "a/..", "./a", "a/./b", "a//b", "a/",
		"/etc/passwd", "/" + filepath.Join(data, "url-secret"), `..\url-secret`, `a\..\..\url-secret`, "a\x00b",
		"artifacts/../../url-secret",
	}
	for _, key := range refused {
		if err := f.Put(ctx, key, []byte("x"), ""); err == nil {
			t.Errorf("Put(%q) accepted", key)
		}
		if fh, err := f.Open(key); !errors.Is(err, blob.ErrNotFound) {
			if fh != nil {
				fh.Close()
			}
			t.Errorf("Open(%q): %v, want ErrNotFound", key, err)
		}
		if err := f.Delete(ctx, key); err == nil {
			t.Errorf("Delete(%q) accepted", key)
		}
	}
	if b, err := os.ReadFile(filepath.Join(data, "url-secret")); err != nil || string(b) != "top secret" {
		t.Fatalf("the file outside the root changed: %q %v", b, err)
	}

	// Encoded dots and slashes are literal characters: the blob lands
	// inside the root under exactly that name, and reads back.
	for _, key := range []string{"%2e%2e/url-secret", "%2e%2e%2furl-secret", "a%2F..%2F..%2Furl-secret", "..%2furl-secret", "%2E%2E", "...", "..a", "a.."} {
		if err := f.Put(ctx, key, []byte(key), ""); err != nil {
			t.Errorf("Put(%q): %v", key, err)
			continue
		}
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(key))); err != nil {
			t.Errorf("Put(%q) did not land inside the root: %v", key, err)
		}
		fh, err := f.Open(key)
		if err != nil {
			t.Errorf("Open(%q): %v", key, err)
			continue
		}
		b, _ := io.ReadAll(fh)
		fh.Close()
		if string(b) != key {
			t.Errorf("Open(%q) read %q", key, b)
		}
	}
	if b, err := os.ReadFile(filepath.Join(data, "url-secret")); err != nil || string(b) != "top secret" {
		t.Fatalf("the file outside the root changed: %q %v", b, err)
	}
	// Nothing but the root and the secret exists in the data directory.
	entries, _ := os.ReadDir(data)
	if len(entries) != 2 {
		t.Errorf("data directory holds %d entries, want 2 (blobs, url-secret)", len(entries))
	}
}

// TestFSArtifactKeysRoundTrip: keys built by the artifacts code
// (runs.ArtifactKey) from hostile or long names (255 characters, the
// contract's limit), are stored and read back byte for byte, stay
// inside the root, and are removed by Delete.
func TestFSArtifactKeysRoundTrip(t *testing.T) {
	ctx := context.Background()
	f, root, _ := newFS(t)
	names := []string{"plan.md", "../../url-secret", `..\..\url-secret`, "%2e%2e%2furl-secret", "a/b/c.txt", "..", ".", "/etc/passwd",
		"naïve résumé 📄.pdf", "name with spaces", strings.Repeat("é", 200), strings.Repeat("n", 255), "x\x00y", "tab\tname"}
	for i, name := range names {
		ref := store.RunRef{ProjectID: 7, TaskID: "6f1c9a52-0d3e-4c1b-9a57-1d2f0e3b4c5d", RunID: "0b7e3f7a-2a43-4b6e-8f0e-5c6d7e8f9a0b"}
		key := runs.ArtifactKey(ref, [4]byte{byte(i), 1, 2, 3}, name)
		data := []byte(fmt.Sprintf("content %d of %q", i, name))
		if err := f.Put(ctx, key, data, "text/plain"); err != nil {
			t.Errorf("name %q: Put(%q): %v", name, key, err)
			continue
		}
		fh, err := f.Open(key)
		if err != nil {
			t.Errorf("name %q: Open: %v", name, err)
			continue
		}
		got, _ := io.ReadAll(fh)
		fh.Close()
		if string(got) != string(data) {
			t.Errorf("name %q: read %q, want %q", name, got, data)
		}
		p := filepath.Join(root, filepath.FromSlash(key))
		if rel, err := filepath.Rel(root, p); err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("name %q: key %q maps outside the root", name, key)
		}
		if err := f.Delete(ctx, key); err != nil {
			t.Errorf("name %q: Delete: %v", name, err)
		}
		if _, err := f.Open(key); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("name %q: Open after Delete: %v", name, err)
		}
	}
}

// TestFSModes: blob files are 0600 and blob directories 0700, with no temp
// file left behind; a second Put replaces the blob whole.
func TestFSModes(t *testing.T) {
	ctx := context.Background()
	f, root, _ := newFS(t)
	for _, key := range []string{"a/b/c/one", "a/b/two", "three"} {
		if err := f.Put(ctx, key, []byte("first version"), ""); err != nil {
			t.Fatal(err)
		}
		if err := f.Put(ctx, key, []byte("second"), ""); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		} else {
			n++
			if strings.HasPrefix(d.Name(), ".put-") {
				t.Errorf("temp file left: %s", p)
			}
			if b, _ := os.ReadFile(p); string(b) != "second" {
				t.Errorf("%s holds %q", p, b)
			}
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("walk: %v, %d files", err, n)
	}
}

// TestSignerLinks: a signed link verifies for its method, path and
// parameters until it expires; any change to them, a second sig, a
// missing or malformed exp, or another secret refuses it. The secret file
// is created 0600 and reused.
func TestSignerLinks(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	s, err := blob.LoadSigner(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, "url-secret"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", info, err)
	}
	path := "/blobs/artifacts/project_1/task_t/run_r/00_a.txt"
	q := s.Sign("GET", path, url.Values{"ct": {"text/plain"}, "name": {"a.txt"}}, time.Minute)
	if err := s.Verify("GET", path, q); err != nil {
		t.Fatalf("fresh link: %v", err)
	}
	again, err := blob.LoadSigner(dir, clock)
	if err != nil || again.Verify("GET", path, q) != nil {
		t.Fatalf("reloaded signer refuses its own link: %v", err)
	}
	other, _ := blob.LoadSigner(t.TempDir(), clock)
	if other.Verify("GET", path, q) == nil {
		t.Error("another secret accepts the link")
	}
	tamper := func(name string, f func(url.Values) (string, string)) {
		c := url.Values{}
		for k, v := range q {
			c[k] = append([]string(nil), v...)
		}
		method, p := f(c)
		if err := s.Verify(method, p, c); !errors.Is(err, blob.ErrBadLink) {
			t.Errorf("%s: %v, want ErrBadLink", name, err)
		}
	}
	tamper("other method", func(url.Values) (string, string) { return "DELETE", path })
	tamper("other path", func(url.Values) (string, string) { return "GET", path + "x" })
	tamper("dot-dot path", func(url.Values) (string, string) { return "GET", "/blobs/artifacts/project_1/../../url-secret" })
	tamper("encoded path", func(url.Values) (string, string) { return "GET", strings.ReplaceAll(path, "/", "%2F") })
	tamper("content type", func(c url.Values) (string, string) { c.Set("ct", "text/html"); return "GET", path })
	tamper("added param", func(c url.Values) (string, string) { c.Set("x", "1"); return "GET", path })
	tamper("later exp", func(c url.Values) (string, string) {
		c.Set("exp", fmt.Sprint(now.Add(time.Hour).Unix()))
		return "GET", path
	})
	tamper("two exp", func(c url.Values) (string, string) { c.Add("exp", c.Get("exp")); return "GET", path })
	tamper("no exp", func(c url.Values) (string, string) { c.Del("exp"); return "GET", path })
	tamper("two sig", func(c url.Values) (string, string) { c.Add("sig", c.Get("sig")); return "GET", path })
	tamper("no sig", func(c url.Values) (string, string) { c.Del("sig"); return "GET", path })
	tamper("bad sig", func(c url.Values) (string, string) { c.Set("sig", "!!"); return "GET", path })
	now = now.Add(time.Minute)
	if err := s.Verify("GET", path, q); !errors.Is(err, blob.ErrBadLink) {
		t.Errorf("expired link: %v", err)
	}
}
