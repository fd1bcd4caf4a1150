package blob

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"strings"
	"testing"
)

// form builds a multipart body of fields (in order) and, unless file is
// nil, a "file" part, then trailing parts.
func form(t testing.TB, fields [][2]string, file []byte, after ...[2]string) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		mw.WriteField(f[0], f[1])
	}
	if file != nil {
		fw, _ := mw.CreateFormFile("file", "x.bin")
		fw.Write(file)
	}
	for _, f := range after {
		mw.WriteField(f[0], f[1])
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

// TestReadUploadForm: the fields before the file are returned (names
// lower-cased) and the file's bytes reach put whole; what follows the file
// is not read; a body that is not such a form, a form without a file,
// more than MaxFormFields fields or a field longer than
// MaxFormFieldBytes is a *FormError; put's own error comes back as is.
func TestReadUploadForm(t *testing.T) {
	file := bytes.Repeat([]byte{0, 1, 0xff, '\r', '\n', '-'}, 1000)
	ct, body := form(t, [][2]string{{"key", "a/b"}, {"Content-Type", "image/png"}}, file, [2]string{"late", "x"})
	var got []byte
	var seen map[string]string
	fields, err := ReadUploadForm(bytes.NewReader(body), ct, func(f map[string]string, r io.Reader) error {
		seen = f
		var err error
		got, err = io.ReadAll(r)
		return err
	})
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("err %v, file %d bytes, want %d", err, len(got), len(file))
	}
	if fields["key"] != "a/b" || fields["content-type"] != "image/png" || len(fields) != 2 || len(seen) != 2 {
		t.Errorf("fields %v (put saw %v)", fields, seen)
	}

	many := make([][2]string, MaxFormFields+1)
	for i := range many {
		many[i] = [2]string{fmt.Sprintf("f%d", i), "v"}
	}
	exactly := many[:MaxFormFields]
	long := [][2]string{{"policy", strings.Repeat("p", MaxFormFieldBytes+1)}}
	longest := [][2]string{{"policy", strings.Repeat("p", MaxFormFieldBytes)}}
	noFileCT, noFile := form(t, [][2]string{{"key", "k"}}, nil)
	manyCT, manyBody := form(t, many, []byte("x"))
	exactlyCT, exactlyBody := form(t, exactly, []byte("x"))
	longCT, longBody := form(t, long, []byte("x"))
	longestCT, longestBody := form(t, longest, []byte("x"))
	for _, c := range []struct {
		name, ct string
		body     []byte
		ok       bool
	}{
		{"json", "application/json", []byte(`{}`), false},
		{"no boundary", "multipart/form-data", body, false},
		{"bad content type", "multipart/form-data; boundary=\"", body, false},
		{"other boundary", "multipart/form-data; boundary=zzz", body, false},
		{"truncated", ct, body[:len(body)/2], false},
		{"empty", ct, nil, false},
		{"no file", noFileCT, noFile, false},
		{"too many fields", manyCT, manyBody, false},
		{"as many fields as allowed", exactlyCT, exactlyBody, true},
		{"field too long", longCT, longBody, false},
		{"longest field", longestCT, longestBody, true},
	} {
		_, err := ReadUploadForm(bytes.NewReader(c.body), c.ct, func(_ map[string]string, r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		})
		var fe *FormError
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case !c.ok && !errors.As(err, &fe):
			t.Errorf("%s: error %T %v, want a *FormError", c.name, err, err)
		}
	}
	// A field without a name.
	raw := "--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--\r\n"
	if _, err := ReadUploadForm(strings.NewReader(raw), "multipart/form-data; boundary=b", nil); err == nil {
		t.Error("a part without a name was accepted")
	}
	// Part headers and preambles count too: a 2 MiB header (which
	// mime/multipart would take) or preamble before the file is refused.
	bigHeader := "--b\r\nContent-Disposition: form-data; name=\"key\"\r\nX-Pad: " + strings.Repeat("p", 2<<20) + "\r\n\r\nv\r\n--b--\r\n"
	bigPreamble := strings.Repeat("p\r\n", 700000) + "\r\n--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b--\r\n"
	for name, raw := range map[string]string{"header": bigHeader, "preamble": bigPreamble} {
		_, err := ReadUploadForm(strings.NewReader(raw), "multipart/form-data; boundary=b", func(map[string]string, io.Reader) error { return nil })
		var fe *FormError
		if !errors.As(err, &fe) || !strings.Contains(fe.Msg, "before the file is larger") {
			t.Errorf("big %s: %v", name, err)
		}
	}
	// A file larger than the head's bound is not bound by it.
	bigFileCT, bigFile := form(t, [][2]string{{"key", "k"}}, bytes.Repeat([]byte("f"), 2*MaxFormOverhead))
	if _, err := ReadUploadForm(bytes.NewReader(bigFile), bigFileCT, func(_ map[string]string, r io.Reader) error {
		n, err := io.Copy(io.Discard, r)
		if n != 2*MaxFormOverhead {
			t.Errorf("file of %d bytes", n)
		}
		return err
	}); err != nil {
		t.Errorf("big file: %v", err)
	}
	mine := errors.New("disk full")
	if _, err := ReadUploadForm(bytes.NewReader(body), ct, func(map[string]string, io.Reader) error { return mine }); err != mine {
		t.Errorf("put's error came back as %v", err)
	}
}

// FuzzReadUploadForm: any body, under a fixed boundary, is either a form
// whose file reached put, or a *FormError; never a panic, and put never
// sees more than the body holds.
func FuzzReadUploadForm(f *testing.F) {
	ct, body := form(f, [][2]string{{"key", "a/b"}, {"policy", "eyJ9"}}, []byte("hello"))
	boundary := strings.TrimPrefix(ct, "multipart/form-data; boundary=")
	f.Add([]byte(body))
	_, b2 := form(f, nil, []byte{})
	f.Add(b2)
	f.Add([]byte("--" + boundary + "\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc"))
	f.Add([]byte("--" + boundary + "\r\nContent-Disposition: form-data; name=file; filename=\"\xff\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=41=\r\n--" + boundary + "--\r\n"))
	f.Add([]byte("--" + boundary + "\r\n\r\n\r\n--" + boundary + "--"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var n int64
		_, err := ReadUploadForm(bytes.NewReader(b), ct, func(_ map[string]string, r io.Reader) error {
			var err error
			n, err = io.Copy(io.Discard, r)
			return err
		})
		var fe *FormError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("error %T %v, want a *FormError", err, err)
		}
		if n > int64(len(b)) {
			t.Fatalf("file of %d bytes from a body of %d", n, len(b))
		}
	})
}
