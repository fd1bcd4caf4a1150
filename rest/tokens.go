package rest

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/coder/websocket"

	"runhub/hub"
	"runhub/proxy/tokens"
	"runhub/store"
)

// Tokens mints and verifies connection tokens (tokens.Tokens).
type Tokens interface {
	Mint(c tokens.Claims, audience string) (string, time.Time, error)
	Verify(token, audience string) (*tokens.Claims, error)
	// ServeJWKS serves the public keys (GET /.well-known/jwks.json).
	ServeJWKS(w http.ResponseWriter, r *http.Request)
}

// WebSocket close codes for a connection token that is refused after the
// upgrade (browsers cannot read the status of a refused upgrade).
const (
	closeBadToken  websocket.StatusCode = 4001 // invalid, expired, wrong audience or key
	closeForbidden websocket.StatusCode = 4003 // valid, but not for this run
)

var (
	errBadToken = &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "authentication_failed",
		Detail: "Invalid connection token."}
	errTokenRun = &apiError{Status: http.StatusForbidden, Type: "authentication_error", Code: "permission_denied",
		Detail: "Connection token is not valid for this run."}
)

// connectionToken returns the connection token a request carries: ?token=,
// or a Bearer value shaped like a JWT (API keys contain no dots).
func connectionToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if b := bearer(r); strings.Count(b, ".") == 2 {
		return b
	}
	return ""
}

func isUpgrade(r *http.Request) bool { return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") }

// refuseToken answers a request whose connection token was refused: 401 or
// 403 on plain HTTP; on a WebSocket upgrade, the upgrade is accepted and
// closed with 4001 or 4003 so that a browser can tell why.
func (s *Server) refuseToken(w http.ResponseWriter, r *http.Request, err *apiError) {
	if !isUpgrade(r) {
		s.writeError(w, r, err)
		return
	}
	s.logAuthFailure(r, err.Status, err.Code)
	ws, aerr := websocket.Accept(w, r, nil)
	if aerr != nil {
		return // Accept has answered
	}
	code := closeBadToken
	if err == errTokenRun {
		code = closeForbidden
	}
	ws.Close(code, err.Detail)
}

// streamWithToken serves GET .../stream for a connection token (client
// audience) instead of an API key.
func (s *Server) streamWithToken(w http.ResponseWriter, r *http.Request, token string) {
	c, err := s.tokens.Verify(token, tokens.AudienceClient)
	if err != nil {
		s.refuseToken(w, r, errBadToken)
		return
	}
	ref, err := s.pathRunRef(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if c.RunID != ref.RunID || c.TaskID != ref.TaskID || c.TeamID != ref.ProjectID {
		s.refuseToken(w, r, errTokenRun)
		return
	}
	run, err := s.store.GetRun(r.Context(), ref)
	if err == nil {
		err = s.stream(w, r.WithContext(hub.WithKey(r.Context(), c.KeyID)), run)
	}
	if err != nil {
		s.writeError(w, r, err)
	}
}

// runForToken resolves the run a client token admits, or ErrForbidden.
func (s *Server) runForToken(ctx context.Context, c *tokens.Claims, runID string) (*store.Run, error) {
	if c.RunID != runID {
		return nil, store.ErrForbidden
	}
	run, err := s.store.RunByID(ctx, runID)
	if err != nil {
		return nil, err
	}
	if run.ProjectID != c.TeamID || run.TaskID != c.TaskID {
		return nil, store.ErrForbidden
	}
	return run, nil
}

// connectionTokenBody is endpoint 9's response.
type connectionTokenBody struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	WSURL     string    `json:"ws_url"`
	// IngestToken comes with an agent token: it authorises the run's
	// event_stream uploads (audience tokens.AudienceIngest).
	IngestToken string `json:"ingest_token,omitempty"`
}

// mintToken serves GET .../connection_token: a client token (scope write
// only when the key has task:write), or with ?role=agent (task:write) an
// agent token.
func (s *Server) mintToken(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	key := r.Context().Value(keyCtx).(*store.APIKey)
	aud, scope := tokens.AudienceClient, "read"
	if key.HasScope(store.ScopeWrite) {
		scope = "write"
	}
	path := r.URL.Path
	path = strings.TrimSuffix(strings.TrimSuffix(path, "/"), "/connection_token") + "/stream"
	switch role := r.URL.Query().Get("role"); role {
	case "", "client":
	case "agent":
		if !key.HasScope(store.ScopeWrite) {
			return missingScope(store.ScopeWrite)
		}
		aud, path = tokens.AudienceAgent, "/agent/connect"
	default:
		return validation("role", "invalid", `role must be "client" or "agent".`)
	}
	claims := tokens.Claims{RunID: run.ID, TaskID: run.TaskID, TeamID: run.ProjectID,
		UserID: key.ID, DistinctID: "api_key:" + key.Prefix, Scope: scope, KeyID: key.ID}
	tok, exp, err := s.tokens.Mint(claims, aud)
	if err != nil {
		return err
	}
	// http → ws, https → wss
	body := connectionTokenBody{Token: tok, ExpiresAt: exp.UTC(), WSURL: "ws" + strings.TrimPrefix(baseURL(r), "http") + path}
	if aud == tokens.AudienceAgent {
		if body.IngestToken, _, err = s.tokens.Mint(claims, tokens.AudienceIngest); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}

// pathRunRef parses the project, task and run of a run path without an
// API key (the project comes from the path, not from authorisation).
func (s *Server) pathRunRef(r *http.Request) (store.RunRef, error) {
	project, err := pathProject(r)
	if err != nil {
		return store.RunRef{}, err
	}
	return refIn(r, project)
}

// pathProject parses the project id of a path; anything but a positive
// integer is 404.
func pathProject(r *http.Request) (int64, error) {
	project, err := strconv.ParseInt(mux.Vars(r)["project_id"], 10, 64)
	if err != nil || project <= 0 {
		return 0, errNotFound
	}
	return project, nil
}
