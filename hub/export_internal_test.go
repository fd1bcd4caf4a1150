package hub

// StateForTest reports how many runs the hub holds state for and how many
// subscriptions those runs have in total (for the external tests).
func (h *Hub) StateForTest() (runs, subs int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, rs := range h.runs {
		rs.mu.Lock()
		subs += len(rs.subs)
		rs.mu.Unlock()
	}
	return len(h.runs), subs
}

// LiveForTest reports how many subscriptions are live (taking broker
// messages rather than catching up from the store).
func (h *Hub) LiveForTest() (live int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, rs := range h.runs {
		rs.mu.Lock()
		for s := range rs.subs {
			if s.live {
				live++
			}
		}
		rs.mu.Unlock()
	}
	return live
}
