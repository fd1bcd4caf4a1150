package main

import (
	"errors"
	"testing"
)

// TestServeMaxUploadBytes: --max-upload-bytes and RUNHUB_MAX_UPLOAD_BYTES
// set the largest prepared upload (0: the default, 1 GiB, applied by the
// API); a negative or unparseable value is a usage error.
func TestServeMaxUploadBytes(t *testing.T) {
	if c, err := loadConfig(nil); err != nil || c.maxUpload != 0 {
		t.Errorf("default: %d %v", c.maxUpload, err)
	}
	if c, err := loadConfig([]string{"--max-upload-bytes", "5368709120"}); err != nil || c.maxUpload != 5<<30 {
		t.Errorf("flag: %+v %v", c, err)
	}
	t.Setenv("RUNHUB_MAX_UPLOAD_BYTES", "1048576")
	if c, err := loadConfig(nil); err != nil || c.maxUpload != 1<<20 {
		t.Errorf("from the environment: %+v %v", c, err)
	}
	for _, args := range [][]string{{"--max-upload-bytes", "-1"}, {"--max-upload-bytes", "1GiB"}} {
		var ue usageError
		if _, err := loadConfig(args); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	t.Setenv("RUNHUB_MAX_UPLOAD_BYTES", "lots")
	var ue usageError
	if _, err := loadConfig(nil); !errors.As(err, &ue) {
		t.Errorf("RUNHUB_MAX_UPLOAD_BYTES=lots: %v, want a usage error", err)
	}
}
