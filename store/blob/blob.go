// Package blob stores artifact bytes. The filesystem store keeps them under
// the data directory; its download links are runhub URLs signed with
// HMAC-SHA256 (Signer), checked in constant time and valid until their
// expiry. Keys are slash-separated paths built by runhub; the store refuses
// any key that would leave its root.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound: no blob with that key.
var ErrNotFound = errors.New("blob not found")

// Store is where artifact bytes go.
type Store interface {
	Put(ctx context.Context, key string, data []byte, contentType string) error
	Delete(ctx context.Context, key string) error
}

// FS is a Store on the local filesystem.
type FS struct{ root string }

// NewFS keeps blobs under root (created if missing).
func NewFS(root string) (*FS, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("blob root: %w", err)
	}
	return &FS{root: root}, nil
}

// path maps a key to a file under the root, refusing keys that escape it.
func (f *FS) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "\\") || strings.ContainsRune(key, 0) {
		return "", fmt.Errorf("bad blob key %q", key)
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." {
			return "", fmt.Errorf("bad blob key %q", key)
		}
	}
	return filepath.Join(f.root, filepath.FromSlash(key)), nil
}

// Put writes the blob whole or not at all (a temp file renamed into place).
func (f *FS) Put(_ context.Context, key string, data []byte, _ string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("blob dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".put-*")
	if err != nil {
		return fmt.Errorf("blob temp: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("blob write: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("blob write: %w", err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("blob rename: %w", err)
	}
	return nil
}

// Delete removes a blob; a missing one is not an error.
func (f *FS) Delete(_ context.Context, key string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blob delete: %w", err)
	}
	return nil
}

// Open reads a blob (for downloads through signed links).
func (f *FS) Open(key string) (io.ReadSeekCloser, error) {
	p, err := f.path(key)
	if err != nil {
		return nil, ErrNotFound
	}
	fh, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blob open: %w", err)
	}
	return fh, nil
}
