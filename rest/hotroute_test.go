package rest

import (
	"maps"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gorilla/mux"

	"runhub/store/teststore"
)

// FuzzHotRoute: the hot route matches exactly the requests mux's own route
// for it matches, with the same variables; anything else goes to mux.
func FuzzHotRoute(f *testing.F) {
	st := teststore.Open(f)
	c := Config{Store: st, Runs: quietRuns(f, st)}
	withDeps(f, &c)
	s := New(c)
	const task, run = "0190a7e4-0000-7000-8000-000000000001", "0190a7e4-0000-7000-8000-000000000002"
	for _, p := range []string{
		"/api/projects/1/tasks/" + task + "/runs/" + run + "/append_log",
		"/api/projects/1/tasks/" + task + "/runs/" + run + "/append_log/",
		"/api/projects/1/tasks/" + task + "/runs/" + run + "/append_log//",
		"/api/projects//tasks/" + task + "/runs/" + run + "/append_log",
		"/api/projects/1/tasks/x/runs/y/append_log",
		"/api/projects/1/tasks/x/runs//append_log",
		"/api/projects/1/tasks/x/runs/y/append_logs",
		"/api/projects/1/tasks/x/runs/y/z/append_log",
		"api/projects/1/tasks/x/runs/y/append_log",
		"//api/projects/1/tasks/x/runs/y/append_log",
		"/api/projects/1/tasks/x/runs/y",
		"/api/projects/1/tasks/x/runs/y/",
		"/api/projects/1/tasks/x/runs/y/logs",
		"/api/projects/ä/tasks/%2F/runs/ /append_log",
		"/api/projects/1/tasks/x/runs/y/append_log/x",
		"/", "", "/healthz",
	} {
		f.Add(p, true)
		f.Add(p, false)
	}
	f.Fuzz(func(t *testing.T, path string, post bool) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if post {
			r.Method = http.MethodPost
		}
		r.URL.Path = path
		var m mux.RouteMatch
		muxHot := false
		if s.router.Match(r, &m) && m.Route != nil {
			tpl, _ := m.Route.GetPathTemplate()
			muxHot = tpl == s.hot.tpl+slash
		}
		vars := s.hot.match(r)
		if (vars != nil) != muxHot {
			t.Fatalf("%s %q: hot route matched %v, mux's route %v", r.Method, path, vars != nil, muxHot)
		}
		if vars != nil && !maps.Equal(vars, m.Vars) {
			t.Fatalf("%s %q: hot route's variables %v, mux's %v", r.Method, path, vars, m.Vars)
		}
	})
}
