package slack

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/extension"
	east "github.com/yuin/goldmark/extension/ast"
	"github.com/yuin/goldmark/text"
)

// MaxText is the longest text the relay posts (Slack truncates long
// messages; 3,900 leaves room under its 4,000 limit).
const MaxText = 3900

var markdown = goldmark.New(goldmark.WithExtensions(extension.Strikethrough, extension.Linkify))

// escapeSlack escapes the three characters Slack mrkdwn reserves.
func escapeSlack(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// ToMrkdwn converts Markdown (as agents write it) to Slack mrkdwn, parsed
// by goldmark rather than rewritten with regular expressions: **bold** and
// headings become *bold*, _emphasis_ stays _emphasis_, ~~strike~~ becomes
// ~strike~, links become <url|text>, lists get bullets or numbers, code
// stays code; text is escaped for Slack. The result is cut to MaxText
// characters.
func ToMrkdwn(md string) string {
	src := []byte(md)
	doc := markdown.Parser().Parse(text.NewReader(src))
	var inline func(n ast.Node) string
	inline = func(n ast.Node) string {
		ib := &strings.Builder{}
		var w func(c ast.Node)
		w = func(c ast.Node) {
			for ch := c.FirstChild(); ch != nil; ch = ch.NextSibling() {
				switch v := ch.(type) {
				case *ast.Text:
					ib.WriteString(escapeSlack(string(v.Segment.Value(src))))
					if v.SoftLineBreak() || v.HardLineBreak() {
						ib.WriteByte('\n')
					}
				case *ast.String:
					ib.WriteString(escapeSlack(string(v.Value)))
				case *ast.CodeSpan:
					var cb strings.Builder
					for t := v.FirstChild(); t != nil; t = t.NextSibling() {
						if tx, ok := t.(*ast.Text); ok {
							cb.Write(tx.Segment.Value(src))
						}
					}
					ib.WriteString("`" + escapeSlack(cb.String()) + "`")
				case *ast.Emphasis:
					mark := "_"
					if v.Level >= 2 {
						mark = "*"
					}
					ib.WriteString(mark)
					w(v)
					ib.WriteString(mark)
				case *east.Strikethrough:
					ib.WriteString("~")
					w(v)
					ib.WriteString("~")
				case *ast.Link:
					ib.WriteString("<" + string(v.Destination) + "|" + inline(v) + ">")
				case *ast.AutoLink:
					ib.WriteString("<" + string(v.URL(src)) + ">")
				case *ast.Image:
					ib.WriteString("<" + string(v.Destination) + ">")
				case *ast.RawHTML:
					for i := 0; i < v.Segments.Len(); i++ {
						seg := v.Segments.At(i)
						ib.WriteString(escapeSlack(string(seg.Value(src))))
					}
				default:
					w(ch)
				}
			}
		}
		w(n)
		return ib.String()
	}
	var walk func(b *strings.Builder, n ast.Node, listDepth int)
	walk = func(b *strings.Builder, n ast.Node, listDepth int) {
		for c := n.FirstChild(); c != nil; c = c.NextSibling() {
			switch v := c.(type) {
			case *ast.Heading:
				b.WriteString("*" + inline(v) + "*\n\n")
			case *ast.Paragraph, *ast.TextBlock:
				b.WriteString(inline(v))
				if listDepth == 0 {
					b.WriteString("\n\n")
				} else {
					b.WriteByte('\n')
				}
			case *ast.List:
				i := v.Start
				for item := v.FirstChild(); item != nil; item = item.NextSibling() {
					b.WriteString(strings.Repeat("    ", listDepth))
					if v.IsOrdered() {
						b.WriteString(strconv.Itoa(i) + ". ")
						i++
					} else {
						b.WriteString("• ")
					}
					walk(b, item, listDepth+1)
				}
				if listDepth == 0 {
					b.WriteByte('\n')
				}
			case *ast.Blockquote:
				qb := &strings.Builder{}
				walk(qb, v, listDepth)
				quoted := strings.TrimRight(qb.String(), "\n")
				for _, line := range strings.Split(quoted, "\n") {
					b.WriteString("&gt; " + line + "\n")
				}
				b.WriteByte('\n')
			case *ast.FencedCodeBlock, *ast.CodeBlock:
				b.WriteString("```\n")
				lines := c.Lines()
				for i := 0; i < lines.Len(); i++ {
					seg := lines.At(i)
					b.WriteString(escapeSlack(string(seg.Value(src))))
				}
				b.WriteString("```\n\n")
			case *ast.ThematicBreak:
				b.WriteString("———\n\n")
			case *ast.HTMLBlock:
				lines := v.Lines()
				for i := 0; i < lines.Len(); i++ {
					seg := lines.At(i)
					b.WriteString(escapeSlack(string(seg.Value(src))))
				}
				b.WriteString("\n")
			default:
				walk(b, c, listDepth)
			}
		}
	}
	b := &strings.Builder{}
	walk(b, doc, 0)
	return truncate(strings.TrimSpace(b.String()), MaxText)
}

// truncate cuts s to at most n characters, ending with "…" when cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
