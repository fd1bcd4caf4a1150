package runs

import (
	"strings"
	"testing"
)

// FuzzDecodeStart exercises start's body decoder: never a panic, errors are
// 400s, and what it accepts is UTF-8 and within the limits.
func FuzzDecodeStart(f *testing.F) {
	for _, s := range append(fuzzSeeds,
		`{"pending_user_message": "fix it", "pending_user_artifact_ids": ["a", "b"]}`,
		`{"pending_user_message": null, "pending_user_artifact_ids": null}`,
		`{"pending_user_message": "", "pending_user_artifact_ids": [1]}`,
		`{"pending_user_message": ["x"], "pending_user_artifact_ids": "a"}`,
		"{\"pending_user_message\": \"\xff\"}",
		`{"pending_user_artifact_ids": [`+strings.Repeat(`"a",`, MaxPendingArtifactIDs)+`"a"]}`,
	) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		sb, err := DecodeStart(body)
		if err != nil {
			wantBadRequest(t, body, err)
			return
		}
		wantUTF8(t, body, sb.ArtifactIDs...)
		if sb.Message != nil {
			wantUTF8(t, body, *sb.Message)
			if *sb.Message == "" || len(*sb.Message) > MaxPendingMessageBytes {
				t.Fatalf("body %q: accepted message of %d bytes", body, len(*sb.Message))
			}
		}
		if len(sb.ArtifactIDs) > MaxPendingArtifactIDs {
			t.Fatalf("body %q: accepted %d artifact ids", body, len(sb.ArtifactIDs))
		}
	})
}
