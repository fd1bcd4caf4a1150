package blob

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strings"
)

// Limits of an upload form (the multipart body of a presigned POST). S3
// caps a POST form's fields at 20 KB in all; the form runhub hands out has
// two, the AWS SDKs' up to ten.
const (
	// MaxFormFields bounds the fields before the file: six times what any
	// S3 client sends, small enough that a form of empty fields cannot keep
	// the server parsing headers for long.
	MaxFormFields = 64
	// MaxFormFieldBytes bounds one field's value: an S3 policy document,
	// the largest field, is about 2 KiB in base64.
	MaxFormFieldBytes = 16 << 10
	// MaxFormOverhead is what a form may add to the file's bytes (the
	// fields, their headers and the boundaries): MaxFormFields fields of
	// MaxFormFieldBytes, plus headers. The body limit of an upload is the
	// largest file plus this.
	MaxFormOverhead = MaxFormFields*(MaxFormFieldBytes+1024) + 64<<10
)

// FormError is a malformed upload form; Msg is safe to show. Err is the
// read error behind it, if any (the body limit's *http.MaxBytesError, a
// deadline), for the caller to tell a body too large from a bad one.
type FormError struct {
	Msg string
	Err error
}

func (e *FormError) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *FormError) Unwrap() error { return e.Err }

func formErr(format string, a ...any) error { return &FormError{Msg: fmt.Sprintf(format, a...)} }

// ReadUploadForm decodes a presigned-POST form as S3 does: text fields,
// then the part named "file", whose bytes go to put with the fields read
// so far (names lower-cased); whatever follows the
// file is not read. It returns the fields before the file. A body that is
// not such a form, or that breaks off inside the file, is a *FormError;
// any other error of put is returned as is.
// The form is read as a stream, so the file is never held in memory.
func ReadUploadForm(body io.Reader, contentType string, put func(fields map[string]string, file io.Reader) error) (map[string]string, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, formErr("The body must be multipart/form-data with a boundary.")
	}
	head := &headLimit{r: body, left: MaxFormOverhead}
	mr := multipart.NewReader(head, params["boundary"])
	fields := map[string]string{}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, errFormHead) {
			return nil, &FormError{Msg: fmt.Sprintf("The form before the file is larger than %d bytes.", MaxFormOverhead), Err: err}
		}
		if errors.Is(err, io.EOF) {
			return nil, formErr("The form has no file field.")
		}
		if err != nil {
			return nil, &FormError{Msg: "The form is malformed.", Err: err}
		}
		name := part.FormName()
		if name == "file" {
			head.off = true
			fr := &formReader{r: part}
			if err := put(fields, fr); err != nil {
				if fr.err != nil {
					// The body broke off or is malformed (or hit its
					// limit): the client's fault, whatever put made of it.
					return nil, &FormError{Msg: "The form is malformed.", Err: fr.err}
				}
				return nil, err
			}
			return fields, nil
		}
		if name == "" {
			return nil, formErr("A form part has no field name.")
		}
		if len(fields) >= MaxFormFields {
			return nil, formErr("The form has more than %d fields.", MaxFormFields)
		}
		v, err := io.ReadAll(io.LimitReader(part, MaxFormFieldBytes+1))
		if errors.Is(err, errFormHead) {
			return nil, &FormError{Msg: fmt.Sprintf("The form before the file is larger than %d bytes.", MaxFormOverhead), Err: err}
		}
		if err != nil {
			return nil, &FormError{Msg: "The form is malformed.", Err: err}
		}
		if len(v) > MaxFormFieldBytes {
			return nil, formErr("The form field %q is longer than %d bytes.", truncate(name), MaxFormFieldBytes)
		}
		fields[strings.ToLower(name)] = string(v)
	}
}

// errFormHead: the form's fields and part headers, before the file, went
// past MaxFormOverhead.
var errFormHead = errors.New("form head too large")

// headLimit bounds what is read of the body until the file starts: the
// field count and length limits bound the fields' values, this bounds
// everything else before the file (part headers, which mime/multipart
// allows up to 10 MiB each, and preambles). The multipart reader reads
// ahead by a buffer, so the bound holds within a few KiB.
type headLimit struct {
	r    io.Reader
	left int64
	off  bool // the file has started: no bound here any more
}

func (h *headLimit) Read(p []byte) (int, error) {
	if h.off {
		return h.r.Read(p)
	}
	if h.left <= 0 {
		return 0, errFormHead
	}
	if int64(len(p)) > h.left {
		p = p[:h.left]
	}
	n, err := h.r.Read(p)
	h.left -= int64(n)
	return n, err
}

// formReader notes a read error of the file part.
type formReader struct {
	r   io.Reader
	err error
}

func (f *formReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err != nil && err != io.EOF {
		f.err = err
	}
	return n, err
}

// truncate keeps a name quoted in an error message short.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}
