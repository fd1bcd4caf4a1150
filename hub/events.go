package hub

import (
	"net/http"

	"runhub/store"
)

// EventsAll is the value of a stream's ?events= that asks for runhub's own
// events too (see RunhubOnly); runhub's viewer sends it.
const EventsAll = "all"

// RunhubOnly reports whether ev is one of runhub's own events, which
// PostHog's server never sends: agent_connected and agent_disconnected
// (the proxy's), and artifact (one per uploaded artifact). PostHog's desktop
// app shows an SSE event of a type it does not know as a line of the
// transcript, so an SSE stream carries these only when the client asks
// (?events=all); see the package doc.
func RunhubOnly(ev store.Event) bool {
	switch ev.Type {
	case "agent_connected", "agent_disconnected":
		return true
	}
	return ev.Kind == store.KindArtifact
}

// sseHide is the filter of an SSE stream: nil (every event) with
// ?events=all, else RunhubOnly. A value other than "" or "all" is a 400.
func sseHide(r *http.Request) (func(store.Event) bool, error) {
	switch v := r.URL.Query().Get("events"); v {
	case "":
		return RunhubOnly, nil
	case EventsAll:
		return nil, nil
	default:
		return nil, store.Invalid("events", `events must be "all" or absent.`)
	}
}
