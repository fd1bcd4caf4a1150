package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestServeSlackLeaseFlags: --slack-lease and --slack-timeout (or their
// RUNHUB_* variables) default to 2 min and 30 s; a lease that leaves no
// room for one delivery (a thread lookup and a post, each up to the
// timeout, and a second to record the outcome) is a usage error, and the
// node refuses to start with a message that says why.
func TestServeSlackLeaseFlags(t *testing.T) {
	if c, err := loadConfig(nil); err != nil || c.slackLease != 2*time.Minute || c.slackTimeout != 30*time.Second {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c, err := loadConfig([]string{"--slack-lease", "5s", "--slack-timeout", "2s"}); err != nil || c.slackLease != 5*time.Second || c.slackTimeout != 2*time.Second {
		t.Fatalf("flags: %+v %v", c, err)
	}
	t.Setenv("RUNHUB_SLACK_LEASE", "3s")
	t.Setenv("RUNHUB_SLACK_TIMEOUT", "1s")
	if c, err := loadConfig(nil); err != nil || c.slackLease != 3*time.Second || c.slackTimeout != time.Second {
		t.Fatalf("environment: %+v %v", c, err)
	}
	for _, args := range [][]string{
		{"--slack-lease", "2999ms"},                        // with the 1 s timeout of the environment
		{"--slack-lease", "60s", "--slack-timeout", "30s"}, // no time left to record the outcome
		{"--slack-lease", "0s"},
		{"--slack-lease", "soon"},
		{"--slack-timeout", "0s"},
		{"--slack-timeout", "-1s"},
	} {
		_, err := loadConfig(args)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}

	// The binary refuses to start, and says why.
	if testing.Short() {
		return
	}
	out, err := exec.Command(runhubBinary(t), "serve", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--slack-lease", "20s", "--slack-timeout", "10s").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), "slack relay lease 20s is too short: it must be at least 21s") {
		t.Fatalf("serve with a 20 s lease and a 10 s timeout: %v\n%s", err, out)
	}
}
