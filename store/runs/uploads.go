package runs

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"

	"runhub/store"
	"runhub/store/blob"
)

// DefaultMaxUploadBytes is the largest artifact a prepared upload takes
// (--max-upload-bytes): 1 GiB holds a repository checkpoint or a skill
// bundle with its assets, and is what one upload can cost the storage
// before anyone looks at it.
const DefaultMaxUploadBytes = 1 << 30

// maxPendingRecordBytes bounds the prepared-upload record read back at
// finalize: name, source and content type of at most a few KiB, plus
// MaxMetadataBytes.
const maxPendingRecordBytes = MaxMetadataBytes + 64<<10

// UploadError is a finalize that cannot be done as asked (nothing uploaded,
// a size other than the prepared one, an upload prepared elsewhere); the
// message is safe to show, as PostHog's {"error"}.
type UploadError struct{ Msg string }

func (e *UploadError) Error() string { return e.Msg }

// PrepareInput is one item of prepare_upload.
type PrepareInput struct {
	Name, Type, ContentType string
	Source                  *string
	Size                    int64
	Metadata                json.RawMessage
}

// PreparedUpload is a prepared upload: what prepare_upload answers (with
// the form added by the caller) and what is kept, beside the blob, until
// finalize_upload makes it a manifest entry.
type PreparedUpload struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Type        string          `json:"type"`
	Source      *string         `json:"source"`
	Size        int64           `json:"size"`
	ContentType string          `json:"content_type"`
	StoragePath string          `json:"storage_path"`
	Metadata    json.RawMessage `json:"metadata,omitempty"`
}

// FinalizeInput is one item of finalize_upload.
type FinalizeInput struct {
	ID, Name, Type, StoragePath, ContentType string
	Source                                   *string
}

// PendingKey is where the record of a prepared upload is kept: in the
// run's folder of the blob store (so it is shared by every node that
// shares the blobs), under "prepared/", which no artifact key can be (an
// artifact's last segment starts with 8 hex digits and "_").
func PendingKey(ref store.RunRef, id string) string {
	return fmt.Sprintf("artifacts/project_%d/task_%s/run_%s/prepared/%s.json", ref.ProjectID, ref.TaskID, ref.RunID, id)
}

func checkCount(n int) error {
	if n == 0 {
		return &store.ValidationError{Attr: "artifacts", Code: "min_length", Detail: "At least one artifact is required."}
	}
	if n > MaxArtifacts {
		return &store.ValidationError{Attr: "artifacts", Code: "max_length",
			Detail: fmt.Sprintf("Ensure this field has no more than %d elements.", MaxArtifacts)}
	}
	return nil
}

func checkNameType(i int, name, typ string) error {
	if name == "" || utf8.RuneCountInString(name) > maxNameLen || !utf8.ValidString(name) {
		return invalidArtifact(i, "name", "name must be 1 to 255 characters of valid UTF-8.")
	}
	if !ArtifactTypes[typ] {
		return invalidArtifact(i, "type", "type must be one of "+artifactTypesText+".")
	}
	return nil
}

// PrepareUploads checks the items (size 1..maxBytes) and records each as
// a prepared upload of run ref with a fresh id and storage path; the
// caller hands out the forms that upload the bytes straight to storage.
// Nothing is added to the run until FinalizeUploads.
func (s *Service) PrepareUploads(ctx context.Context, blobs blob.Store, ref store.RunRef, items []PrepareInput, maxBytes int64) ([]PreparedUpload, error) {
	if err := checkCount(len(items)); err != nil {
		return nil, err
	}
	if _, err := s.Store.GetRun(ctx, ref); err != nil {
		return nil, err
	}
	for i, it := range items {
		if err := checkNameType(i, it.Name, it.Type); err != nil {
			return nil, err
		}
		if err := checkArtifactFields(i, it.ContentType, it.Source, it.Metadata); err != nil {
			return nil, err
		}
		if it.Size < 1 || it.Size > maxBytes {
			return nil, invalidArtifact(i, "size", fmt.Sprintf("size must be between 1 and %d bytes.", maxBytes))
		}
	}
	out := make([]PreparedUpload, len(items))
	for i, it := range items {
		var rnd [4]byte
		rand.Read(rnd[:])
		ct := it.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		out[i] = PreparedUpload{ID: uuid.NewString(), Name: it.Name, Type: it.Type, Source: it.Source, Size: it.Size,
			ContentType: ct, StoragePath: ArtifactKey(ref, rnd, it.Name), Metadata: it.Metadata}
		rec, err := json.Marshal(out[i])
		if err != nil {
			return nil, fmt.Errorf("prepared upload %d: %w", i, err)
		}
		if err := blobs.Put(ctx, PendingKey(ref, out[i].ID), rec, "application/json"); err != nil {
			return nil, fmt.Errorf("prepared upload %d: %w", i, err)
		}
	}
	return out, nil
}

// FinalizeUploads adds prepared uploads of run ref to its manifest, each
// after checking that it was prepared for this run at that storage path
// and that its object exists with the prepared size; either all items are
// added or none. An item whose id is already in the manifest (a retried
// finalize, or one racing on another node) is not added twice: the check
// here answers a retry, and the store's own check under the run's lock
// (store.AddArtifactEntries) settles a race. The name, type, source and content type
// may be restated; size, storage path and metadata are the prepared ones.
func (s *Service) FinalizeUploads(ctx context.Context, blobs blob.Store, ref store.RunRef, items []FinalizeInput) (*store.MutationResult, error) {
	if err := checkCount(len(items)); err != nil {
		return nil, err
	}
	for i, it := range items {
		if err := checkNameType(i, it.Name, it.Type); err != nil {
			return nil, err
		}
		if err := checkArtifactFields(i, it.ContentType, it.Source, nil); err != nil {
			return nil, err
		}
		if _, err := uuid.Parse(it.ID); err != nil || len(it.ID) != 36 {
			return nil, invalidArtifact(i, "id", "id must be the id prepare_upload returned.")
		}
		if it.StoragePath == "" || len(it.StoragePath) > 1024 {
			return nil, invalidArtifact(i, "storage_path", "storage_path must be the storage_path prepare_upload returned.")
		}
	}
	run, err := s.Store.GetRun(ctx, ref)
	if err != nil {
		return nil, err
	}
	have := manifestIDs(run)
	now := store.FormatTime(s.now())
	var entries []json.RawMessage
	var done []string
	for i, it := range items {
		id := strings.ToLower(it.ID)
		if have[id] {
			continue
		}
		have[id] = true
		p, err := readPending(ctx, blobs, ref, id)
		var ue *UploadError
		if errors.As(err, &ue) {
			// A finalize of the same upload on another node may have
			// committed, and removed the record, since the run was read.
			if again, gerr := s.Store.GetRun(ctx, ref); gerr == nil && manifestIDs(again)[id] {
				continue
			}
		}
		if err != nil {
			return nil, err
		}
		if p.StoragePath != it.StoragePath {
			return nil, &UploadError{Msg: fmt.Sprintf("Artifact %d was not prepared for this run at this storage_path.", i)}
		}
		info, err := blobs.Stat(ctx, p.StoragePath)
		if errors.Is(err, blob.ErrNotFound) {
			return nil, &UploadError{Msg: fmt.Sprintf("Artifact %d has not been uploaded.", i)}
		}
		if err != nil {
			return nil, fmt.Errorf("finalize artifact %d: %w", i, err)
		}
		if info.Size != p.Size {
			return nil, &UploadError{Msg: fmt.Sprintf("Artifact %d has %d bytes, not the prepared %d.", i, info.Size, p.Size)}
		}
		ct := it.ContentType
		if ct == "" {
			ct = p.ContentType
		}
		src := it.Source
		if src == nil {
			src = p.Source
		}
		e, err := json.Marshal(ManifestEntry{ID: id, Name: it.Name, Type: it.Type, Source: src, Size: int(p.Size),
			ContentType: ct, StoragePath: p.StoragePath, UploadedAt: now, Metadata: p.Metadata})
		if err != nil {
			return nil, fmt.Errorf("finalize artifact %d: %w", i, err)
		}
		entries = append(entries, e)
		done = append(done, PendingKey(ref, id))
	}
	if len(entries) == 0 {
		if run, err = s.Store.GetRun(ctx, ref); err != nil {
			return nil, err
		}
		return &store.MutationResult{Run: run, Replayed: true}, nil
	}
	res, err := s.Store.AddArtifacts(ctx, ref, entries)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ref.RunID, res)
	// The records have served; one left behind (a failed delete) only
	// costs its few bytes, since the manifest now answers a retry.
	for _, k := range done {
		blobs.Delete(context.WithoutCancel(ctx), k)
	}
	return res, nil
}

// manifestIDs is the set of the ids in run's manifest.
func manifestIDs(run *store.Run) map[string]bool {
	have := make(map[string]bool, len(run.Artifacts))
	for _, raw := range run.Artifacts {
		var m ManifestEntry
		if json.Unmarshal(raw, &m) == nil {
			have[m.ID] = true
		}
	}
	return have
}

// readPending loads the record of prepared upload id of run ref.
func readPending(ctx context.Context, blobs blob.Store, ref store.RunRef, id string) (*PreparedUpload, error) {
	rc, err := blobs.Get(ctx, PendingKey(ref, id))
	if errors.Is(err, blob.ErrNotFound) {
		return nil, &UploadError{Msg: "No upload with this id was prepared for this run."}
	}
	if err != nil {
		return nil, fmt.Errorf("prepared upload: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxPendingRecordBytes))
	if err != nil {
		return nil, fmt.Errorf("prepared upload: %w", err)
	}
	var p PreparedUpload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("prepared upload record: %w", err)
	}
	return &p, nil
}

// artifactList is the "artifacts" list of a prepare or finalize body, each
// item an object.
func artifactList(body []byte) ([]json.RawMessage, error) {
	f, err := ParseObject(body)
	if err != nil {
		return nil, err
	}
	list, err := f.list("artifacts")
	if err != nil {
		return nil, err
	}
	if list == nil {
		return nil, invalid("artifacts", "required", "This field is required.")
	}
	for _, raw := range list {
		if jsonKind(raw) != "dict" {
			return nil, invalid("artifacts", "invalid", "Each artifact must be an object.")
		}
	}
	return list, nil
}

// DecodePrepareUploads decodes a prepare_upload body: {"artifacts": [{name,
// type, size, content_type?, source?, metadata?}, ...]}; PrepareUploads
// checks the values.
func DecodePrepareUploads(body []byte) ([]PrepareInput, error) {
	list, err := artifactList(body)
	if err != nil {
		return nil, err
	}
	items := make([]PrepareInput, len(list))
	for i, raw := range list {
		var a struct {
			Name, Type  *string
			Size        *int64
			ContentType *string `json:"content_type"`
			Source      *string
			Metadata    json.RawMessage
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, invalid("artifacts", "invalid", "Artifact name, type, content_type and source must be strings, size an integer.")
		}
		if a.Name == nil || a.Type == nil || a.Size == nil {
			return nil, invalid("artifacts", "required", "Each artifact needs name, type and size.")
		}
		items[i] = PrepareInput{Name: *a.Name, Type: *a.Type, Size: *a.Size, Source: a.Source, Metadata: metadataOf(a.Metadata)}
		if a.ContentType != nil {
			items[i].ContentType = *a.ContentType
		}
	}
	return items, nil
}

// DecodeFinalizeUploads decodes a finalize_upload body: {"artifacts": [{id,
// name, type, storage_path, content_type?, source?}, ...]};
// FinalizeUploads checks the values.
func DecodeFinalizeUploads(body []byte) ([]FinalizeInput, error) {
	list, err := artifactList(body)
	if err != nil {
		return nil, err
	}
	items := make([]FinalizeInput, len(list))
	for i, raw := range list {
		var a struct {
			ID, Name, Type *string
			StoragePath    *string `json:"storage_path"`
			ContentType    *string `json:"content_type"`
			Source         *string
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, invalid("artifacts", "invalid", "Artifact fields must be strings.")
		}
		if a.ID == nil || a.Name == nil || a.Type == nil || a.StoragePath == nil {
			return nil, invalid("artifacts", "required", "Each artifact needs id, name, type and storage_path.")
		}
		items[i] = FinalizeInput{ID: *a.ID, Name: *a.Name, Type: *a.Type, StoragePath: *a.StoragePath, Source: a.Source}
		if a.ContentType != nil {
			items[i].ContentType = *a.ContentType
		}
	}
	return items, nil
}
