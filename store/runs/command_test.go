package runs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"runhub/store"
)

// TestValidateUserMessage: a user_message needs a non-empty content or a
// non-empty list of artifact ids (PostHog's clients send messages that
// only attach files); content must be a string and artifact_ids a list of
// at most MaxMessageArtifactIDs strings when sent.
func TestValidateUserMessage(t *testing.T) {
	ids := func(n int) string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("%q", fmt.Sprint("a", i))
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	accepted := []string{
		`{"content":"hi"}`,
		`{"artifact_ids":["a1"]}`,
		`{"content":null,"artifact_ids":["a1","a2"]}`,
		`{"content":"","artifact_ids":["a1"],"steer":true}`,
		`{"content":"hi","artifact_ids":[]}`,
		`{"content":"hi","artifact_ids":null}`,
		`{"artifact_ids":` + ids(MaxMessageArtifactIDs) + `}`,
	}
	for _, p := range accepted {
		if _, err := ValidateCommand("user_message", json.RawMessage(p)); err != nil {
			t.Errorf("%s refused: %v", p, err)
		}
	}
	refused := []string{
		``,
		`{}`,
		`{"content":""}`,
		`{"content":"","artifact_ids":[]}`,
		`{"artifact_ids":null}`,
		`{"content":3,"artifact_ids":["a1"]}`,
		`{"artifact_ids":"a1"}`,
		`{"artifact_ids":[1]}`,
		`{"artifact_ids":["a1"],"steer":"yes"}`,
		`{"artifact_ids":` + ids(MaxMessageArtifactIDs+1) + `}`,
	}
	for _, p := range refused {
		_, err := ValidateCommand("user_message", json.RawMessage(p))
		var ve *store.ValidationError
		if !errors.As(err, &ve) || ve.Attr != "params" {
			t.Errorf("%s: %v, want a ValidationError on params", p, err)
		}
	}
}

// TestFirstMessageParams: start's first message is queued as a
// user_message's params: content and artifact_ids when given, each left
// out when not, and always a valid user_message.
func TestFirstMessageParams(t *testing.T) {
	msg := "fix it"
	for _, c := range []struct {
		sb   StartBody
		want string
	}{
		{StartBody{Message: &msg}, `{"content":"fix it"}`},
		{StartBody{ArtifactIDs: []string{"a1"}}, `{"artifact_ids":["a1"]}`},
		{StartBody{Message: &msg, ArtifactIDs: []string{"a1", "a2"}}, `{"content":"fix it","artifact_ids":["a1","a2"]}`},
	} {
		got, err := FirstMessageParams(c.sb)
		if err != nil || string(got) != c.want {
			t.Errorf("FirstMessageParams(%+v) = %s, %v; want %s", c.sb, got, err, c.want)
		}
	}
}
