package slack

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestToMrkdwn: Markdown constructs become their Slack mrkdwn forms, and
// Slack's reserved characters are escaped.
func TestToMrkdwn(t *testing.T) {
	for md, want := range map[string]string{
		"**Fixed** the _login_ bug":            "*Fixed* the _login_ bug",
		"# Summary\n\nAll good":                "*Summary*\n\nAll good",
		"See [PR 7](https://github.com/a/b/7)": "See <https://github.com/a/b/7|PR 7>",
		"~~old~~ new":                          "~old~ new",
		"- one\n- two":                         "• one\n• two",
		"1. first\n2. second":                  "1. first\n2. second",
		"use `a<b` & <script>":                 "use `a&lt;b` &amp; &lt;script&gt;",
		"```\nif a < b {}\n```":                "```\nif a &lt; b {}\n```",
		"> quoted":                             "&gt; quoted",
		"plain https://example.com link":       "plain <https://example.com> link",
	} {
		if got := ToMrkdwn(md); got != want {
			t.Errorf("ToMrkdwn(%q) = %q, want %q", md, got, want)
		}
	}
	long := ToMrkdwn(strings.Repeat("word ", 2000))
	if n := utf8.RuneCountInString(long); n != MaxText || !strings.HasSuffix(long, "…") {
		t.Errorf("long text: %d characters", n)
	}
}

// FuzzToMrkdwn: any Markdown converts without a panic to valid UTF-8 of at
// most MaxText characters.
func FuzzToMrkdwn(f *testing.F) {
	for _, s := range []string{"**b** _i_ ~~s~~ `c`", "# h\n\n- a\n  - b\n1. c", "[l](http://x) <http://y>", "```\ncode <>\n```", "> q\n> > qq", "<div>html</div>", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, md string) {
		out := ToMrkdwn(md)
		if utf8.RuneCountInString(out) > MaxText {
			t.Fatalf("%d characters", utf8.RuneCountInString(out))
		}
		if utf8.ValidString(md) && !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8 from valid input: %q", out)
		}
	})
}
