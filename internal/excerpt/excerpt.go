// Package excerpt makes short, safe excerpts of text that came from outside
// detour (a caller's model name, an upstream's error body) for status
// messages and log lines: bounded in bytes, marked when clipped, valid
// UTF-8, and with whatever looks like a credential replaced.
//
// A detour message or log line quotes outside text only through Of, or
// through Clip for text that cannot hold a credential (a model name):
//
//	msg := "upstream said: " + excerpt.Of(body, excerpt.Max)
//
// Every function is pure and safe for concurrent use.
package excerpt

import (
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Max is the usual bound of an excerpt, in bytes, before its clip mark.
const Max = 256

// Redacted replaces what Scrub removes.
const Redacted = "[redacted]"

// markRoom is the most a clip mark adds: "…[clipped 18446744073709551615 bytes]".
const markRoom = 40

// Clip returns s when it is valid UTF-8 of at most n bytes. Otherwise it
// returns at most n bytes of s, cut on a rune boundary, with invalid UTF-8
// replaced by U+FFFD and, when s was longer, a mark such as
// "…[clipped 10000000 bytes]" (the length of s). The result is valid UTF-8
// of at most n+40 bytes.
func Clip(s string, n int) string { return clip(s, n, len(s)) }

// clip is Clip for s, a prefix of a text of total bytes.
func clip(s string, n, total int) string {
	n = max(n, 0)
	if len(s) <= n && total == len(s) && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(min(len(s), n) + markRoom)
	clipped := total > len(s)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if b.Len()+utf8.RuneLen(r) > n { // U+FFFD, for an invalid byte, takes 3
			clipped = true
			break
		}
		b.WriteRune(r)
		i += size
	}
	if clipped {
		b.WriteString("…[clipped ")
		b.WriteString(strconv.Itoa(total))
		b.WriteString(" bytes]")
	}
	return b.String()
}

// What looks like a credential, in the order Scrub replaces it.
var (
	// An HTTP authorization value.
	bearerRe = regexp.MustCompile(`(?i)\b(bearer)\s+[^\s"',;]+`)
	// A key=value or "key": "value" pair whose key names a secret.
	pairRe = regexp.MustCompile(`(?i)\b(api[-_]?key|access[-_]?key|x-api-key|secret|password|passwd|token)(["']?\s*[:=]\s*["']?)[^\s"',;&]+`)
	// A prefixed key, whole or masked as providers quote it
	// ("sk-proj-****abcd", "sk-ant-api03-…").
	prefixedRe = regexp.MustCompile(`(?i)\b(?:sk|pk|rk|key)[-_][A-Za-z0-9*_\-]{6,}`)
	// A run of 32 or more token characters (base64, hex, a JWT's parts):
	// see tokenLike.
	longRe = regexp.MustCompile(`[A-Za-z0-9_\-+/=]{32,}`)
)

// Scrub replaces every part of s that looks like a credential with
// Redacted, keeping the label ("Bearer [redacted]", "api_key=[redacted]").
// It knows no particular key: a caller that holds one removes it first.
func Scrub(s string) string {
	s = bearerRe.ReplaceAllString(s, "${1} "+Redacted)
	s = pairRe.ReplaceAllString(s, "${1}${2}"+Redacted)
	s = prefixedRe.ReplaceAllString(s, Redacted)
	return longRe.ReplaceAllStringFunc(s, func(m string) string {
		if tokenLike(m) {
			return Redacted
		}
		return m
	})
}

// tokenLike tells a secret from a long name ("Qwen/Qwen2-72B-Instruct-GPTQ-
// Int4"): it holds a digit and a run of 16 letters and digits, where a
// name is short words between separators.
func tokenLike(m string) bool {
	if !strings.ContainsAny(m, "0123456789") {
		return false
	}
	run := 0
	for i := 0; i < len(m); i++ {
		if c := m[i]; c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			if run++; run >= 16 {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// window bounds what Of reads: a credential cut at its end may survive as
// a fragment too short to match, but only far beyond what Clip keeps.
const window = 4 << 10

// Of returns a scrubbed, clipped excerpt of s: at most n bytes plus the
// clip mark, valid UTF-8, credentials replaced (see Scrub). It reads only
// the first few KiB of s, whatever its size.
func Of(s string, n int) string {
	total := len(s)
	if w := max(window, 4*n); len(s) > w {
		s = s[:w]
	}
	return clip(Scrub(s), n, total)
}

// Line is Of for text that goes on one line of an error or a log: control
// characters, invalid UTF-8 and runs of white space become one space, and
// leading and trailing space is dropped, before s is scrubbed and clipped.
func Line(s string, n int) string {
	total := len(s)
	if w := max(window, 4*n); len(s) > w {
		s = s[:w]
	}
	var b strings.Builder
	b.Grow(min(len(s), window))
	space := false
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	line := b.String()
	if total == len(s) && len(line) <= n {
		return Scrub(line)
	}
	if total == len(s) {
		total = len(line) // what was cut is of the cleaned line
	}
	return clip(Scrub(line), n, total)
}
