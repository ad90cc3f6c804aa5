package fakellm

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// chatRequest is the part of a chat completion request the fake reads, in
// the OpenAI JSON shape; gRPC requests are converted to it.
type chatRequest struct {
	Model       string        `json:"model"`
	Messages    []chatMessage `json:"messages"`
	Stream      bool          `json:"stream"`
	MaxTokens   int           `json:"max_tokens"`
	Temperature *float64      `json:"temperature"`
	TopP        *float64      `json:"top_p"`
}

type chatMessage struct {
	Role    string         `json:"role"`
	Content messageContent `json:"content"`
}

// messageContent is a message's text: OpenAI sends either a string or an
// array of content parts, of which the text parts are joined by newlines.
type messageContent string

func (c *messageContent) UnmarshalJSON(data []byte) error {
	switch {
	case len(data) >= 2 && data[0] == '"' && bytes.IndexByte(data, '\\') < 0 && utf8.Valid(data):
		// Nothing to unescape: skip a second decoder on the hot path.
		*c = messageContent(data[1 : len(data)-1])
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*c = messageContent(s)
	case string(data) == "null":
		*c = ""
	case len(data) > 0 && data[0] == '[':
		var parts []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		if err := json.Unmarshal(data, &parts); err != nil {
			return err
		}
		var b strings.Builder
		for _, p := range parts {
			if p.Type != "text" {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(p.Text)
		}
		*c = messageContent(b.String())
	default:
		return errors.New("message content must be a string or an array of content parts")
	}
	return nil
}

// invalid describes why a request is refused: a message and the request
// field at fault ("" when it is the request as a whole).
type invalid struct {
	field, msg string
}

// validate checks r as the OpenAI API does, for the fields the fake reads.
// It returns nil for a valid request.
func (r *chatRequest) validate() *invalid {
	if r.Model == "" {
		return &invalid{"model", "you must provide a model parameter"}
	}
	if len(r.Messages) == 0 {
		return &invalid{"messages", "messages must hold at least one message"}
	}
	for i := range r.Messages {
		switch r.Messages[i].Role {
		case "system", "user", "assistant", "tool", "developer":
		default:
			return &invalid{
				"messages[" + strconv.Itoa(i) + "].role",
				"invalid role " + strconv.Quote(r.Messages[i].Role) + ": want system, user, assistant, tool or developer",
			}
		}
	}
	if t := r.Temperature; t != nil && !(*t >= 0 && *t <= 2) {
		return &invalid{"temperature", "temperature must be in [0, 2]"}
	}
	if p := r.TopP; p != nil && !(*p >= 0 && *p <= 1) {
		return &invalid{"top_p", "top_p must be in [0, 1]"}
	}
	if r.MaxTokens < 0 {
		return &invalid{"max_tokens", "max_tokens must not be negative"}
	}
	return nil
}

// answer is the deterministic answer to one request.
type answer struct {
	id      string
	content string // pieces joined; see nextPiece
	pieces  int    // completion tokens: one per piece
	finish  string
	prompt  int // prompt tokens
}

// maxEchoWords bounds the words of the prompt echoed in an answer.
const maxEchoWords = 24

// newAnswer derives the answer to r from its messages alone, so that the
// same messages always get the same answer from a region:
//
//	[region] echo: <up to 24 first words of the last user message> (ref <hash>)
//
// Each space-separated word is one token, sent as one chunk when streamed.
// max_tokens truncates the answer, with finish reason "length".
func newAnswer(region string, r *chatRequest) answer {
	// FNV-1a over every message, so that the same last message in another
	// conversation gets another ref; stable across processes, unlike maphash.
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	mix := func(s string) {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= prime64
		}
		h ^= 0xff // separator: ("ab","c") and ("a","bc") differ
		h *= prime64
	}
	prompt := 3                 // every reply is primed with a few tokens
	echo := len(r.Messages) - 1 // the last user message, else the last one
	for i := range r.Messages {
		m := &r.Messages[i]
		mix(m.Role)
		mix(string(m.Content))
		prompt += 4 + (len(m.Content)+3)/4 // ~4 bytes a token, plus framing
		if m.Role == "user" {
			echo = i
		}
	}
	last := string(r.Messages[echo].Content)

	var b strings.Builder
	b.Grow(len(region) + min(len(last), 512) + 32)
	b.WriteByte('[')
	b.WriteString(region)
	b.WriteString("] echo:")
	words := 0
	for w := range strings.FieldsSeq(last) {
		if words == maxEchoWords {
			b.WriteString(" ...")
			break
		}
		b.WriteByte(' ')
		b.WriteString(w)
		words++
	}
	b.WriteString(" (ref ")
	var hexBuf [16]byte
	hex := strconv.AppendUint(hexBuf[:0], h>>32|1<<32, 16)[1:] // 8 digits, zero-padded
	b.Write(hex)
	b.WriteByte(')')

	a := answer{
		id:      "chatcmpl-" + strconv.FormatUint(h, 16),
		content: b.String(),
		finish:  "stop",
		prompt:  prompt,
	}
	a.pieces = countPieces(a.content)
	if r.MaxTokens > 0 && a.pieces > r.MaxTokens {
		rest := a.content
		n := 0
		for range r.MaxTokens {
			var p string
			p, rest = nextPiece(rest)
			n += len(p)
		}
		a.content = a.content[:n]
		a.pieces = r.MaxTokens
		a.finish = "length"
	}
	return a
}

// nextPiece splits the first token off s: the text up to the next space,
// the space going with the token after it.
func nextPiece(s string) (piece, rest string) {
	if len(s) == 0 {
		return "", ""
	}
	i := strings.IndexByte(s[1:], ' ')
	if i < 0 {
		return s, ""
	}
	return s[:i+1], s[i+1:]
}

func countPieces(s string) int {
	if s == "" {
		return 0
	}
	return 1 + strings.Count(s[1:], " ")
}

// appendJSONString appends s to dst as a JSON string, replacing invalid
// UTF-8 with U+FFFD as encoding/json does.
func appendJSONString(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
