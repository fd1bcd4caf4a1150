package rest

import (
	"fmt"
	"io"
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
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !(mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
			return nil, &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request", Code: "unsupported_media_type",
				Detail: fmt.Sprintf("Unsupported media type %q in request.", ct)}
		}
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return body, nil
}
