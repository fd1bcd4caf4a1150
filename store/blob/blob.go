// Package blob stores artifact bytes. The filesystem store keeps them under
// the data directory; its download links are runhub URLs signed with
// HMAC-SHA256 (Signer), checked in constant time and valid until their
// expiry. Keys are slash-separated paths built by runhub; the store refuses
// any key that would leave its root.
package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"runhub/store"
)

// ErrNotFound: no blob with that key.
var ErrNotFound = errors.New("blob not found")

// Store is where artifact bytes go.
type Store interface {
	Put(ctx context.Context, key string, data []byte, contentType string) error
	Delete(ctx context.Context, key string) error
	// Get reads a blob (ErrNotFound when there is none); the caller
	// closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat tells a blob's size and stored content type (empty when the
	// store keeps none), or ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
}

// Info describes a stored blob.
type Info struct {
	Size        int64
	ContentType string
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

// Put writes data as the blob key; see PutFrom.
func (f *FS) Put(ctx context.Context, key string, data []byte, ct string) error {
	return f.PutFrom(ctx, key, bytes.NewReader(data), int64(len(data)))
}

// ErrSize: an upload whose length is not the one announced.
var ErrSize = errors.New("upload size differs from the prepared size")

// PutFrom writes exactly size bytes read from src as the blob key; a
// source that ends sooner or holds more is refused with ErrSize and leaves
// nothing behind. It writes the blob whole or not at all (a temp file renamed into place)
// and durably: the file's bytes and then its directory entry are synced
// before Put returns, so that the manifest entry committed after it never
// names a blob that a crash or power loss could still take away. New
// directories are synced into their parents for the same reason. Files
// are 0600 and directories 0700, like everything in the data directory.
func (f *FS) PutFrom(_ context.Context, key string, src io.Reader, size int64) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := f.mkdirs(dir); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".put-*") // mode 0600
	if err != nil {
		return fmt.Errorf("blob temp: %w", unavailable(err))
	}
	defer os.Remove(tmp.Name())
	// One byte more than announced is read to tell "more" from "exactly".
	n, err := io.Copy(tmp, io.LimitReader(src, size+1))
	if err != nil {
		tmp.Close()
		return fmt.Errorf("blob write: %w", unavailable(err))
	}
	if n != size {
		tmp.Close()
		return fmt.Errorf("blob write: %d bytes, want %d: %w", n, size, ErrSize)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("blob sync: %w", unavailable(err))
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("blob write: %w", unavailable(err))
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("blob rename: %w", unavailable(err))
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return nil
}

// mkdirs creates dir (inside the root) and its missing parents, 0700,
// syncing each parent after a new entry appears in it.
func (f *FS) mkdirs(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	rel, err := filepath.Rel(f.root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("blob dir %q outside the root", dir)
	}
	cur := f.root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		next := filepath.Join(cur, part)
		err := os.Mkdir(next, 0o700)
		switch {
		case err == nil:
			if err := syncDir(cur); err != nil {
				return err
			}
		case !errors.Is(err, os.ErrExist):
			return fmt.Errorf("blob dir: %w", unavailable(err))
		}
		cur = next
	}
	return nil
}

// syncDir makes the entries of dir (a rename or a new file in it) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blob dir sync: %w", unavailable(err))
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("blob dir sync: %w", unavailable(err))
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
	// A directory (the folder of a run) is no blob.
	if fi, err := fh.Stat(); err != nil || !fi.Mode().IsRegular() {
		fh.Close()
		return nil, ErrNotFound
	}
	return fh, nil
}

// Get reads a blob.
func (f *FS) Get(_ context.Context, key string) (io.ReadCloser, error) { return f.Open(key) }

// Stat tells a blob's size; the filesystem keeps no content type.
func (f *FS) Stat(_ context.Context, key string) (Info, error) {
	p, err := f.path(key)
	if err != nil {
		return Info{}, ErrNotFound
	}
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !fi.Mode().IsRegular()) {
		return Info{}, ErrNotFound
	}
	if err != nil {
		return Info{}, fmt.Errorf("blob stat: %w", err)
	}
	return Info{Size: fi.Size()}, nil
}

// unavailable marks a filesystem error that means the disk cannot take
// writes now (full, over quota, read-only, failing) with
// store.ErrUnavailable, so that the upload is answered 503 rather than 500,
// as the SQLite store does for the same conditions.
func unavailable(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EIO) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}
