package store

import (
	"strconv"
	"strings"
	"unicode"
)

// TaskSlug is the slug of a project's task number n: the first three ASCII
// letters of the project's name, upper-cased (PostHog's convention), or
// "TSK" when the name has fewer, then "-" and the number. Every backend
// names tasks with it, so a task keeps its slug when the install moves.
func TaskSlug(projectName string, n int64) string {
	var b strings.Builder
	for _, r := range projectName {
		if b.Len() == 3 {
			break
		}
		if r < unicode.MaxASCII && unicode.IsLetter(r) {
			b.WriteRune(unicode.ToUpper(r))
		}
	}
	if b.Len() < 3 {
		b.Reset()
		b.WriteString("TSK")
	}
	return b.String() + "-" + strconv.FormatInt(n, 10)
}
