package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// groupOtherBits are the permission bits that nothing in the data
// directory may have: it holds the SQLite database, signing keys, the
// bootstrap key and artifact bytes, all for the server's user alone.
const groupOtherBits fs.FileMode = 0o077

// secureDataDir creates the data directory 0700, or tightens one made by
// an earlier version (0755 directory, 0644 database): the group and other
// permission bits are removed from it and from everything under it, so
// directories become 0700 and files 0600. Symbolic links are left alone
// (chmod would follow them out of the directory).
func secureDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&groupOtherBits != 0 {
			if err := os.Chmod(p, perm&^groupOtherBits); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("secure data dir: %w", err)
	}
	return nil
}
