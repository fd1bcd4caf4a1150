package rest

import (
	"net/http"
	"strings"

	"github.com/gorilla/mux"
)

// hotRoute matches one route without mux: append_log, a request per agent
// event. Through mux it costs two regexp runs (the match, then the
// variables), a handler per request for the middleware and a copy of the
// request for the route; here it is a walk over the path's segments.
// It is built from the route's own template (the same string mux is
// given), whose variables must take any non-empty segment (mux's default
// [^/]+), followed by the optional trailing slash; it agrees with mux on
// every path (TestHotRouteAgreesWithMux), and whatever it does not match
// goes to mux.
type hotRoute struct {
	method string
	tpl    string   // the template, without the trailing slash: the metrics' route label
	segs   []string // the template's segments after the leading "/"; a variable's is ""
	names  []string // the variables' names, in order
	h      http.Handler
}

// newHotRoute makes the route of tpl (without the optional slash) for
// method. It panics on a template with a variable that has a pattern:
// those are left to mux.
func newHotRoute(tpl, method string, h http.Handler) *hotRoute {
	rt := &hotRoute{method: method, tpl: tpl, h: h}
	for _, seg := range strings.Split(strings.TrimPrefix(tpl, "/"), "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") && !strings.Contains(seg, ":") {
			rt.names = append(rt.names, seg[1:len(seg)-1])
			seg = ""
		} else if strings.ContainsAny(seg, "{}") || seg == "" {
			panic("rest: hot route template " + tpl + " is not made of literal segments and plain variables")
		}
		rt.segs = append(rt.segs, seg)
	}
	return rt
}

// match returns the route's variables for r, as mux would set them (the
// trailing slash's "_s" among them), or nil when r is not the route's.
func (rt *hotRoute) match(r *http.Request) map[string]string {
	if r.Method != rt.method {
		return nil
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/")
	if !ok {
		return nil
	}
	trailing := ""
	if strings.HasSuffix(p, "/") {
		p, trailing = p[:len(p)-1], "/"
	}
	// Checked before any allocation: the path has the template's
	// segments, literal ones equal, variables not empty.
	rest := p
	for i, seg := range rt.segs {
		part, more, found := strings.Cut(rest, "/")
		if found != (i < len(rt.segs)-1) || (seg == "" && part == "") || (seg != "" && part != seg) {
			return nil
		}
		rest = more
	}
	vars := make(map[string]string, len(rt.names)+1)
	i, rest := 0, p
	for _, seg := range rt.segs {
		part, more, _ := strings.Cut(rest, "/")
		if seg == "" {
			vars[rt.names[i]] = part
			i++
		}
		rest = more
	}
	vars["_s"] = trailing
	return vars
}

// serve serves r, a request the route matched with vars.
func (rt *hotRoute) serve(w http.ResponseWriter, r *http.Request, vars map[string]string) {
	rt.h.ServeHTTP(w, mux.SetURLVars(r, vars))
}
