package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"runhub/proxy/tokens"
	"runhub/store/blob"
	"runhub/store/migrate"
)

// migrateStoreCmd copies the embedded store of a data directory, and its
// signing secrets, into an empty PostgreSQL database. Blobs stay where
// they are: the nodes keep --data-dir for them (or use S3).
func migrateStoreCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("migrate-store")
	from := fs.String("from", "", "data directory of the embedded install")
	to := fs.String("to", "", "PostgreSQL URL (postgres://...) of an empty database")
	if rest, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(rest) > 0 || *from == "" || *to == "" {
		return usageError{"migrate-store: want --from DATA_DIR --to postgres://...\n" + usage}
	}
	path := dbPath(*from)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("migrate-store: no store in %s: %w", *from, err)
	}
	// The data directory's secrets go into the database, so that tokens
	// and links made before the move keep working on every node.
	secrets := map[string][]byte{}
	for name, file := range map[string]string{tokens.SecretName: tokens.KeyFile, blob.SecretName: blob.SecretFile} {
		b, err := os.ReadFile(filepath.Join(*from, file))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate-store: %w", err)
		}
		secrets[name] = b
	}
	rep, err := migrate.Copy(ctx, path, *to, secrets)
	if err != nil {
		return fmt.Errorf("migrate-store: %w", err)
	}
	for _, t := range migrate.Tables {
		fmt.Fprintf(stdout, "%-17s %d rows\n", t, rep.Rows[t])
	}
	fmt.Fprintf(stdout, "verified: row counts of every table and the last seq of %d runs match\n", rep.Runs)
	fmt.Fprintf(stdout, "secrets: %v\n", rep.Secrets)
	return nil
}
