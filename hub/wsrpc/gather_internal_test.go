package wsrpc

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestTryReleaseBacklog: TryRelease never blocks on a full socket; what
// the socket did not take stays as a backlog that later writes (a pong
// written from another goroutine, another gathered message) join in
// order, and Release writes it all: the peer reads every byte, in order.
func TestTryReleaseBacklog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()
	server.(*net.TCPConn).SetWriteBuffer(4 << 10)
	client.(*net.TCPConn).SetReadBuffer(4 << 10)

	g := &GatherWriter{conn: server}
	var want bytes.Buffer
	blockedAt := -1
	for i := 0; i < 1000 && blockedAt < 0; i++ {
		msg := bytes.Repeat([]byte{byte('a' + i%26)}, 1000)
		want.Write(msg)
		g.Gather()
		g.Write(msg)
		start := time.Now()
		blocked, err := g.TryRelease()
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("TryRelease took %v", d)
		}
		if blocked {
			blockedAt = i
		}
	}
	if blockedAt < 0 {
		t.Fatal("the socket never filled up")
	}
	pong := []byte("PONG")
	g.Write(pong) // passes through a backlog in order, without blocking
	want.Write(pong)
	g.Gather()
	last := []byte("last message")
	g.Write(last)
	want.Write(last)

	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(want.Len())))
		got <- b
	}()
	g.Begin(5 * time.Second)
	if err := g.Release(); err != nil {
		t.Fatal(err)
	}
	g.End()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer read %d bytes, not the %d written in order (blocked after message %d)", len(b), want.Len(), blockedAt)
	}
}
