package store

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxDerivedTitleLen caps a title derived from a description, in
// characters: 80 is what a task list row shows on one line in PostHog's
// desktop app, which creates tasks from a prompt without a title; the
// description keeps the rest.
const MaxDerivedTitleLen = 80

// DeriveTitle is the title of a task created without one: the first
// non-blank line of its description, trimmed, cut to at most
// MaxDerivedTitleLen characters at the last word boundary that fits (a
// single word longer than that is cut inside it). It returns "" when the
// description has no visible text. The result is valid UTF-8 whatever the
// input, never holds a line break, and is a prefix of that line.
func DeriveTitle(description string) string {
	var line string
	for rest := description; rest != ""; {
		var l string
		l, rest, _ = strings.Cut(rest, "\n")
		if l = strings.TrimSpace(strings.ToValidUTF8(l, "")); l != "" {
			line = l
			break
		}
	}
	if utf8.RuneCountInString(line) <= MaxDerivedTitleLen {
		return line
	}
	// Byte offset just past the last character that fits, and the last
	// space at or before it (a space right after it also counts: the
	// word before it is whole).
	end, n, lastSpace := 0, 0, -1
	for i, r := range line {
		if n == MaxDerivedTitleLen {
			if unicode.IsSpace(r) {
				lastSpace = i
			}
			break
		}
		if unicode.IsSpace(r) {
			lastSpace = i
		}
		n++
		end = i + utf8.RuneLen(r)
	}
	if lastSpace > 0 {
		end = lastSpace
	}
	return strings.TrimRightFunc(line[:end], unicode.IsSpace)
}
