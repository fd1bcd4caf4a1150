package rest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
)

// PresignTTL is how long a download link works.
const PresignTTL = time.Hour

var (
	errArtifactNotFound = &handlerError{Status: http.StatusNotFound, Msg: "Artifact not found on this run"}
	errBadLink          = &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: "This link is invalid or has expired."}
)

// uploadArtifacts serves POST .../artifacts: the whole manifest.
func (s *Server) uploadArtifacts(w http.ResponseWriter, r *http.Request) error {
	ref, body, err := s.runAndBody(r)
	if err != nil {
		return err
	}
	items, err := runs.DecodeArtifacts(body)
	if err != nil {
		return err
	}
	res, err := s.runs.AddArtifacts(r.Context(), s.blobs, ref, items)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"artifacts": res.Run.Artifacts})
	return nil
}

// presignArtifact serves POST .../artifacts/presign: a link to one
// artifact of this run's manifest, valid PresignTTL.
func (s *Server) presignArtifact(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	body, err := readBody(r)
	if err != nil {
		return err
	}
	f, err := runs.ParseObject(body)
	if err != nil {
		return err
	}
	var storagePath string
	if json.Unmarshal(f["storage_path"], &storagePath) != nil || storagePath == "" || len(storagePath) > 500 {
		return validation("storage_path", "invalid", "storage_path must be a string of 1 to 500 characters.")
	}
	for _, raw := range run.Artifacts {
		var m runs.ManifestEntry
		if json.Unmarshal(raw, &m) != nil || m.StoragePath != storagePath {
			continue
		}
		u := ""
		if ps, ok := s.blobs.(presigner); ok {
			if u, err = ps.PresignGet(r.Context(), m.StoragePath, runs.SafeName(m.Name), s.presignTTL); err != nil {
				s.log.WarnContext(r.Context(), "presign failed", "err", err)
				return &handlerError{Status: http.StatusBadRequest, Msg: "Unable to generate download URL"}
			}
		} else {
			u = s.blobURL(r, m)
		}
		writeJSON(w, http.StatusOK, map[string]any{"url": u, "expires_in": int(s.presignTTL.Seconds())})
		return nil
	}
	return errArtifactNotFound
}

// presigner is a blob store whose own download links are used (S3).
type presigner interface {
	PresignGet(ctx context.Context, key, filename string, ttl time.Duration) (string, error)
}

// blobURL is a signed runhub link that downloads an artifact.
func (s *Server) blobURL(r *http.Request, m runs.ManifestEntry) string {
	p := "/blobs/" + m.StoragePath
	q := s.signer.Sign(http.MethodGet, p, url.Values{"ct": {m.ContentType}, "name": {m.Name}}, s.presignTTL)
	segs := strings.Split(m.StoragePath, "/")
	for i := range segs {
		segs[i] = url.PathEscape(segs[i])
	}
	return baseURL(r) + "/blobs/" + strings.Join(segs, "/") + "?" + q.Encode()
}

// downloadBlob serves GET /blobs/{key}: the exact bytes, with the stored
// content type, for a link whose signature and expiry hold; else 403.
func (s *Server) downloadBlob(w http.ResponseWriter, r *http.Request) {
	key := mux.Vars(r)["key"]
	q := r.URL.Query()
	if s.signer.Verify(http.MethodGet, "/blobs/"+key, q) != nil {
		s.writeError(w, r, errBadLink)
		return
	}
	fh, err := s.files.Open(key)
	if errors.Is(err, blob.ErrNotFound) {
		s.writeError(w, r, errNotFound)
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer fh.Close()
	h := w.Header()
	h.Set("Content-Type", q.Get("ct"))
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": runs.SafeName(q.Get("name"))}))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "private, max-age=3600")
	if _, err := io.Copy(w, fh); err != nil {
		s.log.Debug("download interrupted", "err", err)
	}
}
