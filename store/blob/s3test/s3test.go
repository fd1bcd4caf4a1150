// Package s3test starts a throwaway S3-compatible server (versitygw with
// its posix backend) for tests: one per test, on a free loopback port, in
// the test's temp dir, with a bucket created. Without versitygw the test is
// skipped, unless RUNHUB_REQUIRE_SERVERS=1 (CI), where that is a failure.
package s3test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"runhub/store/blob"
)

// Credentials of the test server's root user.
const (
	AccessKey = "runhubtest"
	SecretKey = "runhubtestsecret0123456789"
	Bucket    = "runhub-test"
	Region    = "us-east-1"
)

// binary finds versitygw: on PATH, or where make deps builds it.
func binary() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	p := filepath.Join(gopath, "bin", "versitygw")
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
		return p
	}
	return ""
}

// Start runs versitygw for t and returns the config of a store on it.
func Start(t testing.TB) blob.S3Config {
	t.Helper()
	bin := binary()
	if bin == "" {
		if os.Getenv("RUNHUB_REQUIRE_SERVERS") == "1" {
			t.Fatal("versitygw not available and RUNHUB_REQUIRE_SERVERS=1 (run make deps)")
		}
		t.Skip("versitygw not available, skipping (make deps builds it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	root := t.TempDir()
	cmd := exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", addr, "--quiet", "posix", root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cfg := blob.S3Config{Endpoint: "http://" + addr, Bucket: Bucket, Region: Region, PathStyle: true,
		AccessKey: AccessKey, SecretKey: SecretKey}
	s3, err := blob.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s3.EnsureBucket(ctx, Region)
		cancel()
		if err == nil {
			return cfg
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw on %s did not come up: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
