package rest

import (
	"strings"
	"testing"
)

// TestMetricsRouteLabels: /metrics labels requests by route template (not
// "unmatched", not the raw path with ids).
func TestMetricsRouteLabels(t *testing.T) {
	e := newEnv(t, nil)
	wantStatus(t, e.do(req{Method: "GET", Path: e.tasksPath(e.p1) + "/", Key: e.readKey}), 200)
	wantStatus(t, e.do(req{Method: "GET", Path: "/nope", Key: e.readKey}), 404)
	m := e.do(req{Method: "GET", Path: "/metrics"})
	wantStatus(t, m, 200)
	body := string(m.body)
	for _, want := range []string{
		`runhub_http_requests_total{method="GET",route="/api/projects/{project_id}/tasks",status="200"} 1`,
		`runhub_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
