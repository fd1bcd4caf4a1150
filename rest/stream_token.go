package rest

import (
	"net/http"

	"runhub/proxy/tokens"
	"runhub/store"
)

// streamTokenBody is GET .../stream_token's response, as PostHog's.
type streamTokenBody struct {
	Token         string `json:"token"`
	StreamBaseURL string `json:"stream_base_url"`
}

// streamToken serves GET .../stream_token: a client token for the run that
// only reads (scope read, whatever the key's scopes: it is handed to
// whatever follows the stream), and the public base URL (--public-url
// aware) under which the run's stream is served: the stream is
// {stream_base_url}/api/projects/{p}/tasks/{t}/runs/{r}/stream/.
func (s *Server) streamToken(w http.ResponseWriter, r *http.Request) error {
	run, err := s.runOf(r)
	if err != nil {
		return err
	}
	key := r.Context().Value(keyCtx).(*store.APIKey)
	tok, _, err := s.tokens.Mint(tokens.Claims{RunID: run.ID, TaskID: run.TaskID, TeamID: run.ProjectID,
		UserID: key.ID, DistinctID: "api_key:" + key.Prefix, Scope: "read", KeyID: key.ID}, tokens.AudienceClient)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, streamTokenBody{Token: tok, StreamBaseURL: baseURL(r)})
	return nil
}
