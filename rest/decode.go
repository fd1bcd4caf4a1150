package rest

import (
	"bytes"
	"fmt"
	"mime"
	"net/http"
	"strings"
)

// readBody reads the request body; the size limit is enforced by the
// MaxBytesReader the server installs, which makes this fail with
// *http.MaxBytesError (413). A declared non-JSON content type is 415.
// Package runs decodes what it read: the rules of every mutation body
// live there, shared with the proxy and the hub.
func readBody(r *http.Request) ([]byte, error) {
	// "application/json" as clients send it needs no parsing (whose map of
	// parameters is an allocation per request).
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/json" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !(mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
			return nil, &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request", Code: "unsupported_media_type",
				Detail: fmt.Sprintf("Unsupported media type %q in request.", ct)}
		}
	}
	// A declared length is read into one buffer of that size (io.ReadAll
	// would grow one step by step, copying as it goes), up to
	// maxBodyPrealloc: the declaration is the client's, and a body announced
	// but never sent must not hold a large buffer.
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 {
		buf.Grow(int(min(n, maxBodyPrealloc)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(r.Body); err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return buf.Bytes(), nil
}

// maxBodyPrealloc bounds the buffer readBody sets aside for a body before
// reading it: 1 MiB holds a batch of a few thousand agent events at once,
// and larger bodies grow the buffer as they arrive.
const maxBodyPrealloc = 1 << 20
