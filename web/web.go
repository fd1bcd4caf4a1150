// Package web is the browser live log viewer: static files embedded in the
// binary (no build step, no CDN; it works offline on loopback).
//
// Pages: "/" (sign in with an API key kept in sessionStorage only, then a
// project's tasks and runs) and "/runs/{run_id}" (the live log of a run,
// with an API key or with "#token=<connection token>"). The viewer follows
// the run over the /ws JSON-RPC WebSocket, resumes from its last seq after
// any disconnect (so no line is shown twice or lost), renders log content
// as text only (never as HTML), and batches DOM updates per animation
// frame with a cap on rendered rows.
package web

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/gorilla/mux"
)

//go:embed static
var files embed.FS

// Mount registers the pages and their assets.
func Mount(r *mux.Router) {
	static, _ := fs.Sub(files, "static")
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
			// Log content is rendered as text; the policy is a second fence.
			// No other site may frame a page (clickjacking a signed-in
			// viewer); X-Frame-Options says so to browsers without CSP 2.
			w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
			w.Header().Set("X-Frame-Options", "DENY")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			http.ServeFileFS(w, req, static, name)
		}
	}
	r.HandleFunc("/", page("index.html")).Methods(http.MethodGet)
	r.HandleFunc("/runs/{run_id}", page("run.html")).Methods(http.MethodGet)
	r.PathPrefix("/static/").Handler(http.StripPrefix("/static/", http.FileServerFS(static))).Methods(http.MethodGet)
}
