package fakellm

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// chatRequest is the part of a chat completion request the fake reads, in
// the OpenAI JSON shape; gRPC requests are converted to it.
type chatRequest struct {
	Model          string          `json:"model"`
	Messages       []chatMessage   `json:"messages"`
	Stream         bool            `json:"stream"`
	MaxTokens      int             `json:"max_tokens"`
	Temperature    *float64        `json:"temperature"`
	TopP           *float64        `json:"top_p"`
	Tools          []chatTool      `json:"tools"`
	ToolChoice     json.RawMessage `json:"tool_choice"`
	ResponseFormat *struct {
		Type string `json:"type"`
	} `json:"response_format"`
	Thinking *struct {
		Type string `json:"type"`
	} `json:"thinking"`
	Logprobs    bool `json:"logprobs"`
	TopLogprobs int  `json:"top_logprobs"`
}

type chatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name       string          `json:"name"`
		Parameters json.RawMessage `json:"parameters"`
	} `json:"function"`
}

type chatMessage struct {
	Role       string         `json:"role"`
	Content    messageContent `json:"content"`
	ToolCallID string         `json:"tool_call_id"`
	Prefix     bool           `json:"prefix"` // DeepSeek's prefix completion: the start of the answer
	ToolCalls  []struct {
		ID string `json:"id"`
	} `json:"tool_calls"`
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
	calls := map[string]bool{}
	for i := range r.Messages {
		m := &r.Messages[i]
		switch m.Role {
		case "system", "user", "assistant", "tool", "developer":
		default:
			return &invalid{
				"messages[" + strconv.Itoa(i) + "].role",
				"invalid role " + strconv.Quote(m.Role) + ": want system, user, assistant, tool or developer",
			}
		}
		if m.Prefix && (m.Role != "assistant" || i != len(r.Messages)-1) {
			return &invalid{
				"messages[" + strconv.Itoa(i) + "].prefix",
				"prefix is allowed only on the last message, an assistant one",
			}
		}
		for _, tc := range m.ToolCalls {
			calls[tc.ID] = true
		}
		if m.Role == "tool" && !calls[m.ToolCallID] {
			return &invalid{
				"messages[" + strconv.Itoa(i) + "].tool_call_id",
				"messages with role 'tool' must be a response to a preceding message with 'tool_calls'",
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
	for i, t := range r.Tools {
		if t.Function.Name == "" {
			return &invalid{"tools[" + strconv.Itoa(i) + "].function.name", "a function needs a name"}
		}
	}
	if _, ok := r.forced(); !ok {
		return &invalid{"tool_choice", "tool_choice must be none, auto, required or name one of the tools"}
	}
	if f := r.ResponseFormat; f != nil && f.Type != "text" && f.Type != "json_object" && f.Type != "json_schema" {
		return &invalid{"response_format.type", "response_format.type must be text, json_object or json_schema"}
	}
	if t := r.Thinking; t != nil && t.Type != "enabled" && t.Type != "disabled" {
		return &invalid{"thinking.type", "thinking.type must be enabled or disabled"}
	}
	return nil
}

// forced returns the tool r's tool_choice makes the model call: "" for
// "auto" (or none given, with tools), "-" for "none"; ok is false for a
// tool_choice that is not valid.
func (r *chatRequest) forced() (tool string, ok bool) {
	c := r.ToolChoice
	if len(c) == 0 || string(c) == "null" {
		return "", true
	}
	var mode string
	if json.Unmarshal(c, &mode) == nil {
		switch mode {
		case "auto", "required":
			return "", true
		case "none":
			return "-", true
		}
		return "", false
	}
	var fn struct {
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if json.Unmarshal(c, &fn) != nil {
		return "", false
	}
	for _, t := range r.Tools {
		if t.Function.Name == fn.Function.Name {
			return fn.Function.Name, true
		}
	}
	return "", false
}

// thinks reports whether r asks for a think phase: deepseek-reasoner unless
// thinking is disabled, any model with thinking enabled.
func (r *chatRequest) thinks() bool {
	if r.Thinking != nil {
		return r.Thinking.Type == "enabled"
	}
	return r.Model == "deepseek-reasoner"
}

// jsonMode reports whether r asks for a JSON answer.
func (r *chatRequest) jsonMode() bool {
	return r.ResponseFormat != nil && (r.ResponseFormat.Type == "json_object" || r.ResponseFormat.Type == "json_schema")
}

// maxThinkTokens bounds Settings.ThinkTokens.
const maxThinkTokens = 100000

// defaultThinkTokens is the think phase when Settings.ThinkTokens is zero.
const defaultThinkTokens = 8

// answer is the deterministic answer to one request.
type answer struct {
	id        string
	content   string // pieces joined; see nextPiece
	pieces    int    // content tokens: one per piece
	reasoning string // the think phase, pieces joined; "" when the request does not think
	thoughts  int    // reasoning tokens: one per piece
	call      *toolCall
	finish    string
	prompt    int // prompt tokens
	cached    int // prompt tokens of every message but the last: the "cached" prefix
	logprobs  int // alternatives per token when the request asked for logprobs, else -1
}

// toolCall is the tool call an answer makes; its arguments are streamed in
// pieces of argPiece bytes.
type toolCall struct {
	id, name, args string
}

const argPiece = 8

func (c *toolCall) pieces() int { return (len(c.args) + argPiece - 1) / argPiece }

// completion is the answer's completion tokens, reasoning included.
func (a *answer) completion() int {
	n := a.pieces + a.thoughts
	if a.call != nil {
		n += a.call.pieces()
	}
	return n
}

// maxEchoWords bounds the words of the prompt echoed in an answer.
const maxEchoWords = 24

// answerOptions are the Settings that shape an answer.
type answerOptions struct {
	thinkTokens      int  // length of a think phase (0: defaultThinkTokens)
	blank            bool // a JSON-mode answer comes out blank
	prefixCompletion bool // a last assistant message with prefix is continued
	answerTokens     int  // pad a text answer to this many tokens (0: no padding)
}

// newAnswer derives the answer to r from its messages alone, so that the
// same messages always get the same answer from a region:
//
//	[region] echo: <up to 24 first words of the last user message> (ref <hash>)
//
// or, when the last message is a tool's result, "[region] result: <its
// words> (ref <hash>)". Each space-separated word is one token, sent as one
// chunk when streamed. max_tokens truncates the answer, with finish reason
// "length". A request in JSON mode gets {"answer": "<that text>"}. A
// request that thinks gets a think phase first. A request that offers tools
// (tool_choice not "none") and does not end with a tool's result gets a call
// of the first tool, or the forced one, instead of content: its arguments
// fill the first required (else first) property of the function's
// parameters with the last capitalized word of the message (a place name,
// say; else its last word), and finish reason "tool_calls".
//
// With opt.answerTokens, a text answer goes on after the ref with filler
// words drawn from the hash, up to that many tokens. With
// opt.prefixCompletion, a last assistant message with prefix set is the
// start of the answer: the answer is that of the messages before it, minus
// the prefix (whole if it does not start with the prefix); the prompt
// counts the prefix.
func newAnswer(region string, r *chatRequest, opt answerOptions) answer {
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
	prompt := 3 // every reply is primed with a few tokens
	cached := 0 // the prompt before the last message
	for i := range r.Messages {
		if i == len(r.Messages)-1 && i > 0 {
			cached = prompt
		}
		prompt += 4 + (len(r.Messages[i].Content)+3)/4 // ~4 bytes a token, plus framing
	}
	msgs := r.Messages // what the answer is derived from
	prefix, continuing := "", false
	if last := &msgs[len(msgs)-1]; opt.prefixCompletion && last.Prefix && last.Role == "assistant" && len(msgs) > 1 {
		prefix, continuing = string(last.Content), true
		msgs = msgs[:len(msgs)-1]
	}
	echo := len(msgs) - 1 // the last user message, else the last one
	for i := range msgs {
		m := &msgs[i]
		mix(m.Role)
		mix(string(m.Content))
		if m.Role == "user" {
			echo = i
		}
	}
	label := "] echo:"
	if last := len(msgs) - 1; msgs[last].Role == "tool" {
		echo, label = last, "] result:"
	}
	source := string(msgs[echo].Content)

	var b strings.Builder
	b.Grow(len(region) + min(len(source), 512) + 32)
	b.WriteByte('[')
	b.WriteString(region)
	b.WriteString(label)
	words := 0
	for w := range strings.FieldsSeq(source) {
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
	if n := opt.answerTokens - countPieces(b.String()); n > 0 {
		pad(&b, h, n)
	}

	a := answer{
		id:       "chatcmpl-" + strconv.FormatUint(h, 16),
		content:  b.String(),
		finish:   "stop",
		prompt:   prompt,
		cached:   cached,
		logprobs: -1,
	}
	if r.Logprobs {
		a.logprobs = min(max(r.TopLogprobs, 0), 20)
	}
	if r.thinks() {
		n := opt.thinkTokens
		if n <= 0 {
			n = defaultThinkTokens
		}
		a.reasoning = thinking(region, source, n)
		a.thoughts = countPieces(a.reasoning)
	}
	if forced, _ := r.forced(); len(r.Tools) > 0 && forced != "-" && msgs[len(msgs)-1].Role != "tool" {
		t := &r.Tools[0]
		for i := range r.Tools {
			if r.Tools[i].Function.Name == forced {
				t = &r.Tools[i]
			}
		}
		args, _ := json.Marshal(map[string]string{firstProperty(t.Function.Parameters): argumentWord(source)})
		a.call = &toolCall{id: "call_" + strconv.FormatUint(h, 16), name: t.Function.Name, args: string(args)}
		a.content, a.pieces, a.finish = "", 0, "tool_calls"
		return a
	}
	if r.jsonMode() {
		if opt.blank {
			a.content = "\n\n  \n"
		} else {
			a.content = `{"answer": ` + string(appendJSONString(nil, a.content)) + `}`
		}
	}
	if continuing {
		if rest, ok := strings.CutPrefix(a.content, prefix); ok {
			a.content = rest
		}
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

// fillerWords are the words an answer is padded with.
var fillerWords = [...]string{
	"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
	"india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
	"quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
	"yankee", "zulu", "amber", "basalt", "cedar", "dune", "ember", "fjord",
}

// pad appends n filler words to b, each with a space before it, drawn from
// seed by splitmix64: stable across processes and Go versions.
func pad(b *strings.Builder, seed uint64, n int) {
	b.Grow(n * 8)
	for range n {
		seed += 0x9e3779b97f4a7c15
		z := seed
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		z ^= z >> 31
		b.WriteByte(' ')
		b.WriteString(fillerWords[z%uint64(len(fillerWords))])
	}
}

// argumentWord is the last word of s that starts with a capital letter,
// else its last word, without punctuation around it.
func argumentWord(s string) string {
	words := strings.Fields(s)
	if len(words) == 0 {
		return ""
	}
	trim := func(w string) string {
		return strings.TrimFunc(w, func(r rune) bool { return unicode.IsPunct(r) || unicode.IsSymbol(r) })
	}
	for i := len(words) - 1; i >= 0; i-- {
		if w := trim(words[i]); w != "" && unicode.IsUpper([]rune(w)[0]) {
			return w
		}
	}
	return trim(words[len(words)-1])
}

// thinking is a think phase of n tokens (at least 2) over the words of
// source.
func thinking(region, source string, n int) string {
	words := strings.Fields(source)
	if len(words) == 0 {
		words = []string{"hmm"}
	}
	var b strings.Builder
	b.WriteString("[" + region + "] thinking:") // two pieces
	for i := 2; i < n; i++ {
		b.WriteByte(' ')
		b.WriteString(words[(i-2)%len(words)])
	}
	return b.String()
}

// firstProperty returns the first required property of a JSON schema, else
// its first property in document order, else "input".
func firstProperty(schema json.RawMessage) string {
	var s struct {
		Properties json.RawMessage `json:"properties"`
		Required   []string        `json:"required"`
	}
	if json.Unmarshal(schema, &s) != nil {
		return "input"
	}
	if len(s.Required) > 0 && s.Required[0] != "" {
		return s.Required[0]
	}
	dec := json.NewDecoder(bytes.NewReader(s.Properties))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "input"
	}
	if t, err := dec.Token(); err == nil {
		if name, ok := t.(string); ok && name != "" {
			return name
		}
	}
	return "input"
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
