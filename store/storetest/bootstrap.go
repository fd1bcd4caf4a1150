package storetest

import (
	"sync"
	"testing"

	"runhub/store"
)

// testBootstrap: of several bootstraps of an empty store at once, exactly
// one creates the first project and its key; afterwards a bootstrap writes
// nothing.
func testBootstrap(t *testing.T, s store.Store) {
	ctx := t.Context()
	const racers = 4
	var wg sync.WaitGroup
	created := make([]bool, racers)
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, hash := store.GenerateAPIKey()
			created[i], errs[i] = s.Bootstrap(ctx, "Default", store.NewAPIKey{Label: "bootstrap", Prefix: "rh_boot", Hash: hash,
				Scopes: []string{store.ScopeAll}, AllProjects: true})
		}()
	}
	wg.Wait()
	n := 0
	for i := range racers {
		noErr(t, errs[i], "Bootstrap")
		if created[i] {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d of %d bootstraps created the first project, want 1", n, racers)
	}
	projects, err := s.ListProjects(ctx)
	noErr(t, err, "ListProjects")
	keys, err := s.ListAPIKeys(ctx)
	noErr(t, err, "ListAPIKeys")
	if len(projects) != 1 || projects[0].Name != "Default" || len(keys) != 1 || !keys[0].AllProjects || keys[0].Label != "bootstrap" {
		t.Fatalf("after bootstrap: projects %+v, keys %+v; want one of each", projects, keys)
	}
	again, err := s.Bootstrap(ctx, "Other", store.NewAPIKey{Label: "again", Prefix: "rh_again", Hash: sum("again"), Scopes: []string{store.ScopeAll}})
	noErr(t, err, "Bootstrap again")
	keys, err = s.ListAPIKeys(ctx)
	noErr(t, err, "ListAPIKeys")
	if again || len(keys) != 1 {
		t.Fatalf("bootstrap of a store with a project: created %v, %d keys; want nothing written", again, len(keys))
	}
}
