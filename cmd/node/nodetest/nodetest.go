// Package nodetest gives a test that builds its REST server by hand (a hub
// on a broker of its own, a Slack relay it drives itself, rest's own
// tests) the other dependencies rest.New requires: real ones on the test's
// store, closed when the test ends. A test that needs a whole node uses
// node.New instead.
package nodetest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"path/filepath"
	"sync"
	"testing"

	"runhub/hub"
	"runhub/proxy"
	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/runs"
)

// keyPEM is one signing key for every test's connection tokens: a
// 2048-bit RSA key takes a noticeable time to generate.
var keyPEM = sync.OnceValues(func() (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
})

// Deps are the dependencies of a REST server besides its store and runs
// service.
type Deps struct {
	// Stream is a hub's on a memory broker, for a test that follows no
	// stream of its own.
	Stream func(w http.ResponseWriter, r *http.Request, run *store.Run) error
	Tokens *tokens.Tokens
	// Commands is the sandbox proxy, with no agent connected until one
	// dials /agent/connect of a server that mounts it.
	Commands *proxy.Proxy
	// Files holds the artifacts on the filesystem; Signer signs their
	// links and log_url.
	Files  *blob.FS
	Signer *blob.Signer
}

// New builds Deps on st and svc; tk, when not nil, is the tokens to use.
func New(t testing.TB, st store.Store, svc *runs.Service, tk *tokens.Tokens) *Deps {
	t.Helper()
	h, err := hub.New(hub.Config{Store: st, Broker: hub.NewMemoryBroker()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if tk == nil {
		pemKey, err := keyPEM()
		if err != nil {
			t.Fatal(err)
		}
		if tk, err = tokens.Load(tokens.Config{PrivateKeyPEM: pemKey}); err != nil {
			t.Fatal(err)
		}
	}
	px, err := proxy.New(proxy.Config{Tokens: tk, Runs: svc, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Close)
	dir := t.TempDir()
	signer, err := blob.LoadSigner(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := blob.NewFS(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return &Deps{Stream: h.ServeStream, Tokens: tk, Commands: px, Files: fs, Signer: signer}
}
