package tokens

// Watching reports how many connections wait on keys not yet revoked
// (tests: a connection that ended has unregistered).
func (r *Revocations) Watching() int { return r.watching() }
