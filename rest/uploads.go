package rest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
)

// MaxUploadDuration bounds one upload through a filesystem store's form
// from its first byte to its last: the largest upload (1 GiB by default)
// arrives within it at about 2.4 Mbit/s, the slow uplink the body timeout
// also assumes. Between two reads, the body timeout applies as for any
// body: an upload that stops sending is cut then.
const MaxUploadDuration = time.Hour

// uploadTrailerBytes is how much of a form after its file is read (and
// dropped) before answering: the closing boundary is under 100 bytes; a
// client that sends more after the file gets its connection closed
// instead of kept alive.
const uploadTrailerBytes = 64 << 10

// uploadsPrefix is where a filesystem store takes its upload forms.
const uploadsPrefix = "/uploads/"

// postPresigner is a blob store that makes its own upload forms (S3).
type postPresigner interface {
	PresignPost(ctx context.Context, key string, size int64, contentType string, ttl time.Duration) (string, map[string]string, error)
}

// downloadArtifact serves POST .../artifacts/download: the bytes of one
// artifact of this run's manifest, streamed, with its content type.
// PostHog's agent restores checkpoints with it, and treats 404 as "none".
func (s *Server) downloadArtifact(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	m, err := s.manifestEntry(r, run)
	if err != nil {
		return err
	}
	rc, err := s.blobs.Get(r.Context(), m.StoragePath)
	if errors.Is(err, blob.ErrNotFound) {
		return errArtifactNotFound
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	h := w.Header()
	ct := m.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(m.Size))
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": runs.SafeName(m.Name)}))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		// The status is sent: a cut body is all the client can be told.
		s.log.DebugContext(r.Context(), "artifact download interrupted", "run_id", run.ID, "err", err)
	}
	return nil
}

// manifestEntry decodes {"storage_path"} and finds that entry in run's
// manifest; else 404 "Artifact not found on this run".
func (s *Server) manifestEntry(r *http.Request, run *store.Run) (runs.ManifestEntry, error) {
	body, err := readBody(r)
	if err != nil {
		return runs.ManifestEntry{}, err
	}
	f, err := runs.ParseObject(body)
	if err != nil {
		return runs.ManifestEntry{}, err
	}
	var storagePath string
	if json.Unmarshal(f["storage_path"], &storagePath) != nil || storagePath == "" || len(storagePath) > 1024 {
		return runs.ManifestEntry{}, validation("storage_path", "invalid", "storage_path must be a string of 1 to 1024 characters.")
	}
	for _, raw := range run.Artifacts {
		var m runs.ManifestEntry
		if json.Unmarshal(raw, &m) == nil && m.StoragePath == storagePath {
			return m, nil
		}
	}
	return runs.ManifestEntry{}, errArtifactNotFound
}

// prepareUploads serves POST .../artifacts/prepare_upload: for each item a
// storage path and a form that uploads exactly its size there, straight to
// storage (an S3 POST policy, or a signed runhub URL on the filesystem),
// valid PresignTTL.
func (s *Server) prepareUploads(w http.ResponseWriter, r *http.Request) error {
	ref, body, err := s.runAndBody(r)
	if err != nil {
		return err
	}
	items, err := runs.DecodePrepareUploads(body)
	if err != nil {
		return err
	}
	prepared, err := s.runs.PrepareUploads(r.Context(), s.blobs, ref, items, s.maxUpload)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	if err != nil {
		return err
	}
	type form struct {
		URL    string            `json:"url"`
		Fields map[string]string `json:"fields"`
	}
	type item struct {
		runs.PreparedUpload
		ExpiresIn     int  `json:"expires_in"`
		PresignedPost form `json:"presigned_post"`
	}
	out := make([]item, len(prepared))
	for i, p := range prepared {
		out[i] = item{PreparedUpload: p, ExpiresIn: int(s.presignTTL.Seconds())}
		if pp, ok := s.blobs.(postPresigner); ok {
			u, fields, err := pp.PresignPost(r.Context(), p.StoragePath, p.Size, p.ContentType, s.presignTTL)
			if err != nil {
				s.log.WarnContext(r.Context(), "presign post failed", "run_id", ref.RunID, "err", err)
				return &handlerError{Status: http.StatusBadRequest, Msg: "Unable to generate upload URL"}
			}
			out[i].PresignedPost = form{URL: u, Fields: fields}
		} else {
			out[i].PresignedPost = form{URL: s.uploadURL(r, p), Fields: map[string]string{"key": p.StoragePath}}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"artifacts": out})
	return nil
}

// uploadURL is the signed runhub URL that takes the upload form of p on a
// filesystem store: the signature covers the key and the size.
func (s *Server) uploadURL(r *http.Request, p runs.PreparedUpload) string {
	q := s.signer.Sign(http.MethodPost, uploadsPrefix+p.StoragePath,
		url.Values{"size": {strconv.FormatInt(p.Size, 10)}}, s.presignTTL)
	segs := strings.Split(p.StoragePath, "/")
	for i := range segs {
		segs[i] = url.PathEscape(segs[i])
	}
	return baseURL(r) + uploadsPrefix + strings.Join(segs, "/") + "?" + q.Encode()
}

// finalizeUploads serves POST .../artifacts/finalize_upload: the uploaded
// items join the manifest; the response is the whole manifest.
func (s *Server) finalizeUploads(w http.ResponseWriter, r *http.Request) error {
	ref, body, err := s.runAndBody(r)
	if err != nil {
		return err
	}
	items, err := runs.DecodeFinalizeUploads(body)
	if err != nil {
		return err
	}
	res, err := s.runs.FinalizeUploads(r.Context(), s.blobs, ref, items)
	if errors.Is(err, store.ErrNotFound) {
		return s.whichNotFound(r, ref.TaskID)
	}
	var ue *runs.UploadError
	if errors.As(err, &ue) {
		return &handlerError{Status: http.StatusBadRequest, Msg: ue.Msg}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"artifacts": res.Run.Artifacts})
	return nil
}

// isUpload tells a request to a filesystem store's upload form, whose body
// may be as large as the largest upload rather than the API's limit.
func (s *Server) isUpload(r *http.Request) bool {
	return s.files != nil && r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, uploadsPrefix)
}

// uploadBlob serves POST /uploads/{key}: the upload form of a filesystem
// store, as S3 takes a POST policy's. The link's signature and expiry must
// hold (else 403); the form's "file" must have exactly the signed size
// (else 400, and nothing is stored); a form "key" field, if sent, must be
// the link's key. 204 when stored.
func (s *Server) uploadBlob(w http.ResponseWriter, r *http.Request) {
	key := mux.Vars(r)["key"]
	q := r.URL.Query()
	if s.signer.Verify(http.MethodPost, uploadsPrefix+key, q) != nil {
		discardSmall(r)
		s.writeError(w, r, errBadLink)
		return
	}
	size, err := strconv.ParseInt(q.Get("size"), 10, 64)
	if err != nil || size < 0 {
		discardSmall(r)
		s.writeError(w, r, errBadLink)
		return
	}
	body := &progressBody{r: r.Body, rc: http.NewResponseController(w), idle: s.timeouts.Body,
		end: time.Now().Add(MaxUploadDuration)}
	_, err = blob.ReadUploadForm(body, r.Header.Get("Content-Type"), func(fields map[string]string, file io.Reader) error {
		if k, ok := fields["key"]; ok && k != key {
			return &handlerError{Status: http.StatusBadRequest, Msg: "The form's key is not the key of this upload link."}
		}
		return s.files.PutFrom(r.Context(), key, file, size)
	})
	var fe *blob.FormError
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		// The closing boundary (and any parts after the file, which S3
		// ignores too) is read up to a bound, so that the connection can
		// carry the client's next request.
		io.CopyN(io.Discard, body, uploadTrailerBytes)
		w.WriteHeader(http.StatusNoContent)
		return
	case errors.As(err, &mbe), errors.Is(err, os.ErrDeadlineExceeded):
	case errors.Is(err, blob.ErrSize):
		err = &handlerError{Status: http.StatusBadRequest, Msg: "The file is not the size this upload was prepared for (" + strconv.FormatInt(size, 10) + " bytes)."}
	case errors.As(err, &fe):
		err = &handlerError{Status: http.StatusBadRequest, Msg: fe.Msg}
	}
	discardSmall(r)
	s.writeError(w, r, err)
}

// refusedDrainBytes bounds what a refused upload form has read of its body
// before the answer. A small form (a browser's or an agent's mistake) is
// read to its end, so that its sender gets the answer and not a reset
// from a connection closed with its bytes unread; a larger one is not
// read at all (the connection is closed instead), so that a refusal never
// costs the upload's size. 64 KiB is what one socket buffer holds.
const refusedDrainBytes = 64 << 10

// discardSmall reads the rest of a body that announced at most
// refusedDrainBytes.
func discardSmall(r *http.Request) {
	if r.ContentLength >= 0 && r.ContentLength <= refusedDrainBytes {
		io.CopyN(io.Discard, r.Body, refusedDrainBytes)
	}
}

// progressBody pushes the body-read deadline on while bytes arrive: an
// upload may take up to end, but no pause between reads may last longer
// than idle.
type progressBody struct {
	r      io.Reader
	rc     *http.ResponseController
	idle   time.Duration
	end    time.Time
	pushed time.Time
}

// Read pushes the deadline at most every quarter of idle: a read takes
// microseconds, and setting a deadline on every one would cost more than
// the read; a pause therefore gets between three quarters of idle and idle.
func (b *progressBody) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(b.pushed) >= b.idle/4 {
		b.pushed = now
		d := now.Add(b.idle)
		if d.After(b.end) {
			d = b.end
		}
		b.rc.SetReadDeadline(d)
	}
	return b.r.Read(p)
}
