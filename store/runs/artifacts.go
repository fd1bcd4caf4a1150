package runs

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"runhub/store"
	"runhub/store/blob"
)

// Artifact limits of the contract.
const (
	MaxArtifacts     = 50
	MaxArtifactBytes = 30 << 20
	maxNameLen       = 255
)

// ArtifactTypes are the allowed artifact types.
var ArtifactTypes = map[string]bool{"plan": true, "context": true, "reference": true, "output": true,
	"artifact": true, "tree_snapshot": true, "user_attachment": true, "skill_bundle": true}

// artifactTypesText lists ArtifactTypes for error messages.
const artifactTypesText = "plan, context, reference, output, artifact, tree_snapshot, user_attachment, skill_bundle"

// MaxMetadataBytes bounds an artifact's metadata object: PostHog's skill
// bundles carry five short fields (name, source, sha256, format, schema
// version), about 200 bytes; 16 KiB leaves room for more without letting
// the manifest, which every run read returns, grow by much per artifact.
const MaxMetadataBytes = 16 << 10

// ArtifactInput is one artifact of an upload request.
type ArtifactInput struct {
	Name            string
	Type            string
	Content         string
	ContentEncoding string // "utf-8" (default) or "base64"
	ContentType     string
	Source          *string
	Metadata        json.RawMessage // a JSON object, or nil
}

// ManifestEntry is one artifact in a run's manifest.
type ManifestEntry struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	Type        string  `json:"type"`
	Source      *string `json:"source"`
	Size        int     `json:"size"`
	ContentType string  `json:"content_type"`
	StoragePath string  `json:"storage_path"`
	UploadedAt  string  `json:"uploaded_at"`
	// Metadata is what the uploader said about the artifact (a skill
	// bundle's name, source and digest); absent when it said nothing.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

func invalidArtifact(i int, field, detail string) error {
	return &store.ValidationError{Attr: fmt.Sprintf("artifacts.%d.%s", i, field), Code: "invalid", Detail: detail}
}

// SafeName is the file name an artifact is stored under: the base name
// only (no directories, no "..", no path separators), without control
// characters, at most 255 bytes; "artifact" when nothing is left.
func SafeName(name string) string {
	name = strings.ReplaceAll(name, "\\", "/")
	name = path.Base(name)
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '/' || r == utf8.RuneError {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	for len(name) > maxNameLen {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name == "" || name == "." || name == ".." {
		return "artifact"
	}
	return name
}

// AddArtifacts validates every artifact, writes the blobs, then appends the
// manifest entries and their events in one store transaction. Either all
// are stored or none: a failure removes the blobs already written.
func (s *Service) AddArtifacts(ctx context.Context, blobs blob.Store, ref store.RunRef, items []ArtifactInput) (*store.MutationResult, error) {
	if len(items) == 0 {
		return nil, &store.ValidationError{Attr: "artifacts", Code: "min_length", Detail: "At least one artifact is required."}
	}
	if len(items) > MaxArtifacts {
		return nil, &store.ValidationError{Attr: "artifacts", Code: "max_length",
			Detail: fmt.Sprintf("Ensure this field has no more than %d elements.", MaxArtifacts)}
	}
	// The run must exist before anything is written.
	if _, err := s.Store.GetRun(ctx, ref); err != nil {
		return nil, err
	}
	contents := make([][]byte, len(items))
	for i, it := range items {
		if it.Name == "" || utf8.RuneCountInString(it.Name) > maxNameLen || !utf8.ValidString(it.Name) {
			return nil, invalidArtifact(i, "name", "name must be 1 to 255 characters of valid UTF-8.")
		}
		if !ArtifactTypes[it.Type] {
			return nil, invalidArtifact(i, "type", "type must be one of "+artifactTypesText+".")
		}
		if err := checkArtifactFields(i, it.ContentType, it.Source, it.Metadata); err != nil {
			return nil, err
		}
		switch it.ContentEncoding {
		case "", "utf-8":
			contents[i] = []byte(it.Content)
		case "base64":
			b, err := base64.StdEncoding.DecodeString(it.Content)
			if err != nil {
				return nil, invalidArtifact(i, "content", "content is not valid base64.")
			}
			contents[i] = b
		default:
			return nil, invalidArtifact(i, "content_encoding", `content_encoding must be "utf-8" or "base64".`)
		}
		if len(contents[i]) > MaxArtifactBytes {
			return nil, invalidArtifact(i, "content", fmt.Sprintf("content is larger than %d bytes.", MaxArtifactBytes))
		}
	}
	now := store.FormatTime(s.now())
	entries := make([]json.RawMessage, len(items))
	var written []string
	undo := func() {
		for _, k := range written {
			blobs.Delete(context.WithoutCancel(ctx), k)
		}
	}
	for i, it := range items {
		var rnd [4]byte
		rand.Read(rnd[:])
		ct := it.ContentType
		if ct == "" {
			ct = "text/plain; charset=utf-8"
			if it.ContentEncoding == "base64" {
				ct = "application/octet-stream"
			}
		}
		key := ArtifactKey(ref, rnd, it.Name)
		if err := blobs.Put(ctx, key, contents[i], ct); err != nil {
			undo()
			return nil, fmt.Errorf("store artifact %d: %w", i, err)
		}
		written = append(written, key)
		entries[i], _ = json.Marshal(ManifestEntry{ID: uuid.NewString(), Name: it.Name, Type: it.Type, Source: it.Source,
			Size: len(contents[i]), ContentType: ct, StoragePath: key, UploadedAt: now, Metadata: it.Metadata})
	}
	res, err := s.Store.AddArtifacts(ctx, ref, entries)
	if err != nil {
		undo()
		return nil, err
	}
	s.publish(ctx, ref.RunID, res)
	return res, nil
}

// checkArtifactFields checks the optional fields of artifact i.
func checkArtifactFields(i int, contentType string, source *string, metadata json.RawMessage) error {
	if len(contentType) > maxNameLen || !utf8.ValidString(contentType) {
		return invalidArtifact(i, "content_type", "content_type must be at most 255 characters of valid UTF-8.")
	}
	if source != nil && !utf8.ValidString(*source) {
		return invalidArtifact(i, "source", "source must be valid UTF-8.")
	}
	if metadata != nil && (jsonKind(metadata) != "dict" || len(metadata) > MaxMetadataBytes || !utf8.Valid(metadata)) {
		return invalidArtifact(i, "metadata", fmt.Sprintf("metadata must be an object of at most %d bytes.", MaxMetadataBytes))
	}
	return nil
}

// maxKeyNameBytes bounds the last segment of a blob key: filesystems refuse
// a file name longer than 255 bytes (NAME_MAX), and the segment is the
// 8-hex-digit random prefix, "_", then the name, which may itself be 255
// bytes; the name is cut (at a character boundary) to fit.
const maxKeyNameBytes = 255

// ArtifactKey is the blob key of an artifact of run ref: its run's folder,
// then a random prefix (so two artifacts of one name never collide) and
// the artifact's name made safe for a path (SafeName), short enough for
// any filesystem.
func ArtifactKey(ref store.RunRef, rnd [4]byte, name string) string {
	prefix := hex.EncodeToString(rnd[:]) + "_"
	name = SafeName(name)
	for len(prefix)+len(name) > maxKeyNameBytes {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return fmt.Sprintf("artifacts/project_%d/task_%s/run_%s/%s%s", ref.ProjectID, ref.TaskID, ref.RunID, prefix, name)
}
