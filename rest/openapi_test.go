package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/gorilla/mux"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"runhub/proxy/tokens"
	"runhub/store"
	"runhub/store/blob"
	"runhub/store/teststore"
)

// openAPIDoc is the part of the embedded document the tests look at.
type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

func openAPIServer(t *testing.T) (*Server, store.Store) {
	t.Helper()
	st := teststore.Open(t)
	ws := func(http.ResponseWriter, *http.Request, RunAuthorizer) {}
	tk, err := tokens.Load(tokens.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fs, err := blob.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := blob.LoadSigner(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := Config{Store: st, Runs: quietRuns(t, st), WS: ws, Tokens: tk, Agent: func(http.ResponseWriter, *http.Request) {},
		Blobs: fs, Files: fs, Signer: signer}
	withDeps(t, &c)
	return New(c), st
}

func openAPIParse(t *testing.T) (openAPIDoc, any) {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("embedded openapi.json is not valid JSON: %v", err)
	}
	var raw any
	if err := json.Unmarshal(openAPIDocument, &raw); err != nil {
		t.Fatalf("embedded openapi.json is not valid JSON: %v", err)
	}
	return doc, raw
}

var varPattern = regexp.MustCompile(`\{(\w+):[^}]+\}`)

// TestOpenAPIDocumentCoversRoutes checks that every route the server
// registers (API and ops) is in the document with each of its methods, and
// that the document describes no route the server does not have.
func TestOpenAPIDocumentCoversRoutes(t *testing.T) {
	doc, _ := openAPIParse(t)
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	s, _ := openAPIServer(t)
	registered := map[string]bool{}
	err := s.router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return nil // a route without a path (none today)
		}
		// A variable's pattern ({key:.+}) is not part of the documented path.
		path := varPattern.ReplaceAllString(strings.TrimSuffix(tpl, slash), "{$1}")
		registered[path] = true
		ops, ok := doc.Paths[path]
		if !ok {
			t.Errorf("route %s (template %s) is missing from openapi.json paths", path, tpl)
			return nil
		}
		methods, err := route.GetMethods()
		if err != nil {
			t.Errorf("route %s has no methods: %v", path, err)
			return nil
		}
		for _, m := range methods {
			if _, ok := ops[strings.ToLower(m)]; !ok {
				t.Errorf("openapi.json paths[%q] has no %s operation", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk routes: %v", err)
	}
	for _, want := range []string{"/healthz", "/readyz", "/metrics", "/api/schema", runPath + "/stream", "/ws", "/.well-known/jwks.json", "/agent/connect", "/blobs/{key}"} {
		if !registered[want] {
			t.Errorf("route %s not found while walking the router", want)
		}
	}
	var extra []string
	for path := range doc.Paths {
		if !registered[path] {
			extra = append(extra, path)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("openapi.json describes paths the server does not register: %v", extra)
	}
}

// TestOpenAPIRefsResolve checks that every $ref of the document points at
// something inside it.
func TestOpenAPIRefsResolve(t *testing.T) {
	_, raw := openAPIParse(t)
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if k == "$ref" {
					ref, _ := c.(string)
					if _, ok := openAPIPointer(raw, ref); !ok {
						t.Errorf("%s: $ref %q does not resolve", at, ref)
					}
					continue
				}
				walk(c, at+"/"+k)
			}
		case []any:
			for _, c := range v {
				walk(c, at+"/[]")
			}
		}
	}
	walk(raw, "#")
}

// openAPIPointer resolves a local JSON pointer reference ("#/a/b").
func openAPIPointer(doc any, ref string) (any, bool) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, false
	}
	cur := doc
	for _, tok := range strings.Split(ref[2:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[tok]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// TestOpenAPISchemaEndpoint checks that GET /api/schema (with and without
// the trailing slash) serves the embedded document.
func TestOpenAPISchemaEndpoint(t *testing.T) {
	s, _ := openAPIServer(t)
	for _, path := range []string{"/api/schema", "/api/schema/"} {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, w.Code)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
		if !bytes.Equal(w.Body.Bytes(), openAPIDocument) {
			t.Errorf("GET %s: body differs from the embedded document", path)
		}
	}
}

// TestOpenAPIResponsesMatchSchemas validates real responses of the server
// against the document's component schemas, so the document and the
// renderers cannot drift apart unnoticed.
func TestOpenAPIResponsesMatchSchemas(t *testing.T) {
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(openAPIDocument))
	if err != nil {
		t.Fatalf("embedded openapi.json is not valid JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	const loc = "urn:runhub:openapi"
	if err := c.AddResource(loc, raw); err != nil {
		t.Fatalf("add document: %v", err)
	}
	schema := func(name string) *jsonschema.Schema {
		t.Helper()
		sch, err := c.Compile(loc + "#/components/schemas/" + name)
		if err != nil {
			t.Fatalf("compile schema %s: %v", name, err)
		}
		return sch
	}

	s, st := openAPIServer(t)
	ctx := context.Background()
	project, err := st.CreateProject(ctx, "openapi")
	if err != nil {
		t.Fatalf("create project: %v", err)
	}
	secret, prefix, hash := store.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.NewAPIKey{Label: "openapi", Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeAll}, Projects: []int64{project.ID}}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	do := func(method, path, body string, wantStatus int, schemaName string) any {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req := httptest.NewRequest(method, path, rd)
		req.Header.Set("Authorization", "Bearer "+secret)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != wantStatus {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, w.Code, wantStatus, w.Body.String())
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(w.Body.Bytes()))
		if err != nil {
			t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
		}
		if err := schema(schemaName).Validate(inst); err != nil {
			t.Errorf("%s %s: body does not match %s: %v\nbody: %s", method, path, schemaName, err, w.Body.String())
		}
		return inst
	}

	base := "/api/projects/" + jsonNumber(project.ID) + "/tasks"
	task := do(http.MethodPost, base, `{"title": "Document the API", "repository": "PostHog/posthog", "json_schema": {"type": "object"}}`,
		http.StatusCreated, "Task").(map[string]any)
	taskURL := base + "/" + task["id"].(string)
	do(http.MethodGet, base, "", http.StatusOK, "PaginatedTaskList")
	do(http.MethodPatch, taskURL, `{"description": null}`, http.StatusOK, "Task")
	do(http.MethodPost, taskURL+"/run", "", http.StatusCreated, "Task")

	run := do(http.MethodPost, taskURL+"/runs", `{"stage": "plan", "state": {"a": 1}, "output": {"x": true}}`,
		http.StatusCreated, "Run").(map[string]any)
	runURL := taskURL + "/runs/" + run["id"].(string)
	do(http.MethodGet, taskURL+"/runs?limit=1", "", http.StatusOK, "PaginatedRunList")
	do(http.MethodGet, runURL, "", http.StatusOK, "Run")
	do(http.MethodPatch, runURL, `{"status": "completed", "state_remove_keys": ["a"]}`, http.StatusOK, "Run")
	do(http.MethodPost, runURL+"/append_log", `{"entries": [{"type": "notification", "notification": {"method": "x"}}]}`,
		http.StatusOK, "Run")
	do(http.MethodPatch, runURL+"/set_output", `{"output": {"done": true}}`, http.StatusOK, "Run")
	next := do(http.MethodPost, runURL+"/resume_in_cloud", "", http.StatusCreated, "Run").(map[string]any)
	nextURL := taskURL + "/runs/" + next["id"].(string)
	do(http.MethodPost, nextURL+"/cancel", "", http.StatusOK, "Run")
	fresh := do(http.MethodPost, taskURL+"/runs", `{}`, http.StatusCreated, "Run").(map[string]any)
	do(http.MethodPost, taskURL+"/runs/"+fresh["id"].(string)+"/start", `{"pending_user_message": "go"}`, http.StatusOK, "Task")
	do(http.MethodPost, taskURL+"/runs/"+fresh["id"].(string)+"/start", `{}`, http.StatusBadRequest, "ErrorBody")
	do(http.MethodGet, taskURL, "", http.StatusOK, "Task")

	do(http.MethodPatch, runURL+"/set_output", `{"output": 1}`, http.StatusBadRequest, "HandlerError")
	do(http.MethodPost, base, `{}`, http.StatusBadRequest, "ErrorBody")
	do(http.MethodGet, base+"/not-a-uuid", "", http.StatusNotFound, "ErrorBody")
}

func jsonNumber(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
