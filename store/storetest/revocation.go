package storetest

import (
	"slices"
	"testing"

	"runhub/store"
)

// testRevocation checks what nodes poll to learn of revocations made by
// another process: the mark changes with every revocation (and only then),
// even for two revocations within one clock tick, and RevokedAPIKeyIDs
// lists exactly the revoked keys.
func testRevocation(t *testing.T, s store.Store) {
	ctx := t.Context()
	mark := func(what string) store.RevocationMark {
		t.Helper()
		m, err := s.RevocationMark(ctx)
		noErr(t, err, "RevocationMark "+what)
		return m
	}
	ids := func(what string, want ...int64) {
		t.Helper()
		got, err := s.RevokedAPIKeyIDs(ctx)
		noErr(t, err, "RevokedAPIKeyIDs "+what)
		if want == nil {
			want = []int64{}
		}
		if got == nil || !slices.Equal(got, want) {
			t.Errorf("RevokedAPIKeyIDs %s = %#v, want %v", what, got, want)
		}
	}

	m0 := mark("on an empty store")
	if m0.Count != 0 || !m0.Newest.IsZero() {
		t.Errorf("mark of an empty store = %+v, want zero", m0)
	}
	ids("on an empty store")

	var keys []int64
	for i := range 3 {
		k, err := s.CreateAPIKey(ctx, store.NewAPIKey{Label: "rev", Prefix: "rh_rev", Hash: sum("revocation " + string(rune('a'+i))),
			Scopes: []string{store.ScopeRead}, AllProjects: true})
		noErr(t, err, "CreateAPIKey")
		keys = append(keys, k.ID)
	}
	if m := mark("after creating keys"); !m.Same(m0) {
		t.Errorf("creating keys changed the mark: %+v → %+v", m0, m)
	}
	ids("before any revocation")

	noErr(t, s.RevokeAPIKey(ctx, keys[1]), "RevokeAPIKey")
	m1 := mark("after one revocation")
	if m1.Same(m0) || m1.Count != 1 || m1.Newest.IsZero() {
		t.Errorf("mark after one revocation = %+v (before %+v)", m1, m0)
	}
	if !mark("again").Same(m1) {
		t.Error("the mark changed without a revocation")
	}
	ids("after one revocation", keys[1])

	// Revoking twice keeps the first revocation: nothing changes.
	noErr(t, s.RevokeAPIKey(ctx, keys[1]), "RevokeAPIKey twice")
	if m := mark("after revoking twice"); !m.Same(m1) {
		t.Errorf("revoking a revoked key changed the mark: %+v → %+v", m1, m)
	}

	// Two revocations in quick succession (possibly the same timestamp)
	// each change the mark.
	noErr(t, s.RevokeAPIKey(ctx, keys[0]), "RevokeAPIKey")
	m2 := mark("after the second revocation")
	noErr(t, s.RevokeAPIKey(ctx, keys[2]), "RevokeAPIKey")
	m3 := mark("after the third revocation")
	if m2.Same(m1) || m3.Same(m2) || m3.Count != 3 {
		t.Errorf("marks %+v, %+v, %+v: each revocation must change the mark", m1, m2, m3)
	}
	if m3.Newest.Before(m1.Newest) {
		t.Errorf("newest revocation went back: %v then %v", m1.Newest, m3.Newest)
	}
	ids("after three revocations", keys...)
}
