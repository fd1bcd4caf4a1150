package main

import (
	"errors"
	"testing"
	"time"

	"runhub/rest"
)

// TestServeIngestIdleFlag: --ingest-idle-timeout (or
// RUNHUB_INGEST_IDLE_TIMEOUT) sets how long an event_stream upload may
// wait for a line; the default is rest.DefaultIngestIdleTimeout; a bad
// value is a usage error.
func TestServeIngestIdleFlag(t *testing.T) {
	if c, err := loadConfig(nil); err != nil || c.ingestIdle != rest.DefaultIngestIdleTimeout {
		t.Errorf("default: %v %v, want %v", c.ingestIdle, err, rest.DefaultIngestIdleTimeout)
	}
	if c, err := loadConfig([]string{"--ingest-idle-timeout", "90s"}); err != nil || c.ingestIdle != 90*time.Second {
		t.Errorf("--ingest-idle-timeout 90s: %v %v", c, err)
	}
	t.Setenv("RUNHUB_INGEST_IDLE_TIMEOUT", "10m")
	if c, err := loadConfig(nil); err != nil || c.ingestIdle != 10*time.Minute {
		t.Errorf("from the environment: %v %v", c, err)
	}
	for _, v := range []string{"0s", "-1s", "soon"} {
		var ue usageError
		if _, err := loadConfig([]string{"--ingest-idle-timeout", v}); !errors.As(err, &ue) {
			t.Errorf("%s: %v, want a usage error", v, err)
		}
	}
}
