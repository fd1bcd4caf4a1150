package rest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestReadyzNamesTheNode: behind a balancer an operator must tell nodes
// apart: /readyz carries the node id and the deployment warnings found at
// start, and /metrics has runhub_node_info with the id.
func TestReadyzNamesTheNode(t *testing.T) {
	c := fullConfig(t)
	c.NodeID, c.Warnings = "node-a", []string{"artifacts are local"}
	srv := httptest.NewServer(New(c))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Status, Node string
		Warnings     []string
	}
	json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if res.StatusCode != 200 || body.Status != "ready" || body.Node != "node-a" || len(body.Warnings) != 1 || body.Warnings[0] != "artifacts are local" {
		t.Fatalf("/readyz: %d %+v", res.StatusCode, body)
	}
	res, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(b), `runhub_node_info{node="node-a"} 1`) {
		t.Fatalf("/metrics lacks runhub_node_info for node-a")
	}
}
