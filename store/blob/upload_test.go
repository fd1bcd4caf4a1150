package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runhub/store/blob"
	"runhub/store/blob/s3test"
)

// stores are the backends every blob-store rule is checked on: the
// filesystem, and S3 on a real versitygw.
func stores(t *testing.T) map[string]blob.Store {
	fs, _, _ := newFS(t)
	s3, err := blob.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]blob.Store{"fs": fs, "s3": s3}
}

// TestStoreGetStat: on both backends, Get reads back what Put wrote and
// Stat tells its size (S3 also its content type); a missing blob is
// ErrNotFound for both.
func TestStoreGetStat(t *testing.T) {
	ctx := context.Background()
	for name, st := range stores(t) {
		data := []byte{0, 1, 2, 0xff}
		if err := st.Put(ctx, "a/b/c.bin", data, "image/png"); err != nil {
			t.Fatalf("%s: put: %v", name, err)
		}
		info, err := st.Stat(ctx, "a/b/c.bin")
		if err != nil || info.Size != 4 || (name == "s3" && info.ContentType != "image/png") {
			t.Errorf("%s: stat %+v %v", name, info, err)
		}
		rc, err := st.Get(ctx, "a/b/c.bin")
		if err != nil {
			t.Fatalf("%s: get: %v", name, err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Errorf("%s: got %v", name, got)
		}
		for _, k := range []string{"a/b/nope", "a/b"} {
			if _, err := st.Stat(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Errorf("%s: stat %s: %v, want ErrNotFound", name, k, err)
			}
			if _, err := st.Get(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Errorf("%s: get %s: %v, want ErrNotFound", name, k, err)
			}
		}
	}
}

// TestFSPutFromExactSize: PutFrom stores a source of exactly the announced
// size; one byte more or less is ErrSize and leaves neither the blob nor a
// temp file behind.
func TestFSPutFromExactSize(t *testing.T) {
	ctx := context.Background()
	f, root, _ := newFS(t)
	for _, n := range []int{9, 11} {
		err := f.PutFrom(ctx, "x/y", bytes.NewReader(bytes.Repeat([]byte("z"), n)), 10)
		if !errors.Is(err, blob.ErrSize) {
			t.Errorf("%d bytes for 10: %v, want ErrSize", n, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, "x"))
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	if err := f.PutFrom(ctx, "x/y", strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	if info, err := f.Stat(ctx, "x/y"); err != nil || info.Size != 10 {
		t.Errorf("stat %+v %v", info, err)
	}
}

// postForm sends an S3-style form: fields, then the file.
func postForm(t *testing.T, u string, fields map[string]string, file []byte) (int, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	fw, _ := mw.CreateFormFile("file", "f")
	fw.Write(file)
	mw.Close()
	res, err := http.Post(u, mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestS3PresignPost: versitygw takes the POST-policy form of PresignPost:
// exactly the prepared size is stored with the prepared content type; one
// byte more or less, another key, or the form after it expired is refused
// and stores nothing.
func TestS3PresignPost(t *testing.T) {
	ctx := context.Background()
	s3, err := blob.NewS3(s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	u, fields, err := s3.PresignPost(ctx, "runs/r/1_a.bin", 10, "application/zip", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{9, 11} {
		if st, body := postForm(t, u, fields, bytes.Repeat([]byte("z"), n)); st < 400 || st >= 500 {
			t.Errorf("%d bytes for 10: %d %s", n, st, body)
		}
	}
	if _, err := s3.Stat(ctx, "runs/r/1_a.bin"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("a refused upload left a blob: %v", err)
	}
	other := map[string]string{}
	for k, v := range fields {
		other[k] = v
	}
	other["key"] = "runs/r/elsewhere"
	if st, body := postForm(t, u, other, []byte("0123456789")); st < 400 || st >= 500 {
		t.Errorf("another key: %d %s", st, body)
	}
	if st, body := postForm(t, u, fields, []byte("0123456789")); st/100 != 2 {
		t.Fatalf("upload: %d %s", st, body)
	}
	info, err := s3.Stat(ctx, "runs/r/1_a.bin")
	if err != nil || info.Size != 10 || info.ContentType != "application/zip" {
		t.Errorf("stored %+v %v", info, err)
	}
	if _, err := s3.Stat(ctx, "runs/r/elsewhere"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("the form wrote another key: %v", err)
	}
	u, fields, err = s3.PresignPost(ctx, "runs/r/2_b.bin", 3, "text/plain", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	if st, body := postForm(t, u, fields, []byte("abc")); st < 400 || st >= 500 {
		t.Errorf("expired form: %d %s", st, body)
	}
}
