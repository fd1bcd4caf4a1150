package store

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDeriveTitle(t *testing.T) {
	long := strings.Repeat("word ", 30) // 150 characters
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"blank lines", " \n\t\n  ", ""},
		{"one line", "Fix the login bug", "Fix the login bug"},
		{"first line only", "Fix the login bug\nIt fails when the password has a space.", "Fix the login bug"},
		{"first non-blank line", "\n\n  Fix it  \nmore", "Fix it"},
		{"crlf", "Fix it\r\nmore", "Fix it"},
		{"exactly 80", strings.Repeat("a", 80), strings.Repeat("a", 80)},
		{"cut at a word", long, strings.TrimSpace(long[:80])},
		{"space right after the 80th character", strings.Repeat("a", 80) + " b", strings.Repeat("a", 80)},
		{"word straddles the cut", strings.Repeat("a", 75) + " bbbbbbbbbb", strings.Repeat("a", 75)},
		{"one long word is cut inside", strings.Repeat("x", 100), strings.Repeat("x", 80)},
		{"runes, not bytes", strings.Repeat("é", 100), strings.Repeat("é", 80)},
		{"invalid utf-8 dropped", "ab\xffcd", "abcd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DeriveTitle(tc.in); got != tc.want {
				t.Errorf("DeriveTitle(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// FuzzDeriveTitle: whatever the description, the title is valid UTF-8, at
// most MaxDerivedTitleLen characters, one line without surrounding space,
// and empty only when the description has no visible text.
func FuzzDeriveTitle(f *testing.F) {
	for _, s := range []string{"", "Fix it", "a\nb", strings.Repeat("word ", 40), strings.Repeat("é", 90), "x\xff\xfe y", "\r\n\t z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got := DeriveTitle(in)
		if !utf8.ValidString(got) {
			t.Fatalf("title %q is not valid UTF-8", got)
		}
		if n := utf8.RuneCountInString(got); n > MaxDerivedTitleLen {
			t.Fatalf("title has %d characters", n)
		}
		if strings.ContainsAny(got, "\n") || strings.TrimSpace(got) != got {
			t.Fatalf("title %q holds a line break or surrounding space", got)
		}
		if got == "" && strings.TrimSpace(strings.ToValidUTF8(in, "")) != "" {
			t.Fatalf("no title for %q", in)
		}
		if got != "" && !strings.Contains(strings.ToValidUTF8(in, ""), got) {
			t.Fatalf("title %q is not taken from %q", got, in)
		}
	})
}
