package tokens

import (
	"errors"
	"testing"
)

// FuzzVerifyToken: Verify never panics, and whatever it accepts is a
// token for the audience with a run and a scope.
func FuzzVerifyToken(f *testing.F) {
	tk, err := Load(Config{DataDir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	good, _, _ := tk.Mint(testClaims(), AudienceClient)
	agent, _, _ := tk.Mint(testClaims(), AudienceAgent)
	for _, s := range []string{good, agent, tampered(good), "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", good + "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := tk.Verify(s, AudienceClient)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error %v is not ErrBadToken", err)
			}
			return
		}
		if c.RunID == "" || (c.Scope != "read" && c.Scope != "write") {
			t.Fatalf("accepted %+v", c)
		}
	})
}
