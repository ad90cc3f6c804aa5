package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/detour-dev/detour/internal/chatwire"
	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// The OpenAI chat completions wire format is internal/chatwire's, shared
// with detour's own HTTP face: every field of detour.v1 maps to its JSON
// member and back, unary and streamed.

// newChatRequest maps req to the upstream's JSON request. tenantAs is the
// backend's send_tenant_as and tenant the caller's.
func newChatRequest(req *detourv1.CompleteRequest, stream bool, tenantAs, tenant string) *chatwire.Request {
	cr := chatwire.NewRequest(req)
	if tenant != "" {
		switch tenantAs {
		case regions.TenantAsUser:
			cr.User = tenant
		case regions.TenantAsUserID:
			cr.UserID = tenant
		}
	}
	if stream {
		cr.Stream = true
		cr.StreamOptions = &chatwire.StreamOptions{IncludeUsage: true}
	}
	return cr
}

// sets reports whether cr writes the JSON member name.
func sets(cr *chatwire.Request, name string) bool {
	switch name {
	case "model", "messages", "stream", "stream_options", "n":
		return true // detour's own, whatever their value
	case "temperature":
		return cr.Temperature != nil
	case "top_p":
		return cr.TopP != nil
	case "max_tokens":
		return cr.MaxTokens != 0
	case "max_completion_tokens":
		return cr.MaxCompletionTokens != 0
	case "stop":
		return len(cr.Stop) > 0
	case "frequency_penalty":
		return cr.FrequencyPenalty != nil
	case "presence_penalty":
		return cr.PresencePenalty != nil
	case "seed":
		return cr.Seed != nil
	case "logprobs":
		return cr.Logprobs
	case "top_logprobs":
		return cr.TopLogprobs != nil
	case "tools":
		return len(cr.Tools) > 0
	case "tool_choice":
		return cr.ToolChoice != nil
	case "parallel_tool_calls":
		return cr.ParallelToolCalls != nil
	case "response_format":
		return cr.ResponseFormat != nil
	case "thinking":
		return cr.Thinking != nil
	case "reasoning_effort":
		return cr.ReasoningEffort != ""
	case "user":
		return cr.User != ""
	case "user_id":
		return cr.UserID != ""
	}
	return false
}

// MaxExtraBodyBytes bounds CompleteRequest.extra_body.
const MaxExtraBodyBytes = 64 << 10

// reservedExtra are the members extra_body may not carry: detour writes them
// itself and a caller's value would break the call (stream) or its answer
// (n > 1: detour returns one choice).
var reservedExtra = []string{"model", "messages", "stream", "stream_options", "n"}

// ErrExtraBody is wrapped by every problem CheckExtraBody reports.
var ErrExtraBody = errors.New("extra_body")

// CheckExtraBody reports why s cannot be a request's extra_body: it is
// over MaxExtraBodyBytes, not one JSON object, carries one of the members
// detour owns (model, messages, stream, stream_options, n), or a member
// twice. It returns nil for an empty s.
func CheckExtraBody(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxExtraBodyBytes {
		return fmt.Errorf("%w: %d bytes, over the limit of %d", ErrExtraBody, len(s), MaxExtraBodyBytes)
	}
	_, err := extraMembers(s)
	return err
}

type member struct {
	name  string
	value json.RawMessage
}

// extraMembers splits the JSON object s into its members, in order.
func extraMembers(s string) ([]member, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	tok, err := dec.Token()
	if d, ok := tok.(json.Delim); err != nil || !ok || d != '{' {
		return nil, fmt.Errorf("%w: must be a JSON object such as {\"top_k\": 40}", ErrExtraBody)
	}
	var out []member
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: not valid JSON: %w", ErrExtraBody, err)
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%w: not valid JSON: %w", ErrExtraBody, err)
		}
		for _, r := range reservedExtra {
			if name == r {
				return nil, fmt.Errorf("%w: member %q is detour's own (%s are refused)", ErrExtraBody, name, strings.Join(reservedExtra, ", "))
			}
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: member %q appears twice", ErrExtraBody, excerpt.Clip(name, 32))
		}
		seen[name] = true
		out = append(out, member{name, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: not valid JSON: %w", ErrExtraBody, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: must be one JSON object, with nothing after it", ErrExtraBody)
	}
	return out, nil
}

// encodeChatRequest returns the JSON body of req for the upstream, with
// extra_body's members added after detour's own.
func encodeChatRequest(req *detourv1.CompleteRequest, stream bool, tenantAs, tenant string) ([]byte, error) {
	cr := newChatRequest(req, stream, tenantAs, tenant)
	body, err := chatwire.Marshal(cr)
	if err != nil || req.GetExtraBody() == "" {
		return body, err
	}
	if len(req.GetExtraBody()) > MaxExtraBodyBytes {
		return nil, CheckExtraBody(req.GetExtraBody())
	}
	extra, err := extraMembers(req.GetExtraBody())
	if err != nil {
		return nil, err
	}
	body = body[:len(body)-1] // the closing brace
	for _, m := range extra {
		if sets(cr, m.name) {
			continue
		}
		body = append(body, ',')
		name, err := json.Marshal(m.name) // JSON's quoting: strconv's \x7f is not JSON
		if err != nil {
			return nil, fmt.Errorf("%w: member name: %w", ErrExtraBody, err)
		}
		body = append(body, name...)
		body = append(body, ':')
		body = append(body, m.value...)
	}
	return append(body, '}'), nil
}

// jsonMode reports whether req asks for a JSON answer.
func jsonMode(req *detourv1.CompleteRequest) bool {
	switch req.GetResponseFormat().GetType() {
	case "json_object", "json_schema":
		return true
	}
	return false
}

// ErrBlankJSON is wrapped when a JSON-mode answer came with blank content
// and no tool call, which DeepSeek documents as possible and to be retried.
// It wraps ErrMalformed: breaker.Classify sorts it as Failed, so the call is
// tried elsewhere and the answer is never cached.
var ErrBlankJSON = fmt.Errorf("%w: blank content in JSON mode", ErrMalformed)

// maxHeldBlank bounds the whitespace a JSON-mode stream may start with
// before it counts as blank.
const maxHeldBlank = 64 << 10

// blankGuard holds back the whitespace a JSON-mode stream starts with, so
// that a stream that ends blank fails before any of its content reached the
// caller, while the router can still try elsewhere. Not safe for
// concurrent use.
type blankGuard struct {
	on      bool   // the request is in JSON mode
	started bool   // non-blank content or a tool call went out
	held    string // leading whitespace not yet passed on
}

// check passes ch on, with the held whitespace in front of its first
// non-blank content, or holds its content back. It returns ErrBlankJSON
// when ch finishes a blank answer.
func (g *blankGuard) check(ch *detourv1.CompleteChunk) error {
	if !g.on || g.started {
		return nil
	}
	if len(ch.GetToolCallDeltas()) > 0 || strings.TrimSpace(ch.GetDelta()) != "" {
		g.started = true
		ch.Delta = g.held + ch.Delta
		g.held = ""
		return nil
	}
	g.held += ch.Delta
	ch.Delta = ""
	if ch.GetFinishReason() != "" || len(g.held) > maxHeldBlank {
		return ErrBlankJSON
	}
	return nil
}

// end returns ErrBlankJSON when the stream ended without content.
func (g *blankGuard) end() error {
	if g.on && !g.started {
		return ErrBlankJSON
	}
	return nil
}

// blankAnswer reports a unary JSON-mode answer that is blank.
func blankAnswer(req *detourv1.CompleteRequest, resp *detourv1.CompleteResponse) bool {
	return jsonMode(req) && len(resp.GetToolCalls()) == 0 && strings.TrimSpace(resp.GetContent()) == ""
}

// emptyChunk reports a chunk that carries nothing for the caller (a
// role-only first delta, a keep-alive event).
func emptyChunk(ch *detourv1.CompleteChunk) bool {
	return ch.Delta == "" && ch.ReasoningDelta == "" && len(ch.ToolCallDeltas) == 0 && ch.Logprobs == nil &&
		ch.FinishReason == "" && ch.Usage == nil
}

// decodeAnswer maps a unary answer body to its first choice. When the body
// is unusable it returns nil and says why.
func decodeAnswer(body []byte) (*detourv1.CompleteResponse, string) {
	var cr chatwire.Response
	if err := chatwire.Unmarshal(body, &cr); err != nil {
		return nil, err.Error()
	}
	if len(cr.Choices) == 0 {
		msg := "no choices"
		if present(cr.Error) {
			msg += "; upstream said: " + upstreamMessage(body)
		}
		return nil, msg
	}
	c := &cr.Choices[0]
	if (c.Message.Content == nil || *c.Message.Content == "") && c.Message.ReasoningContent == "" && c.FinishReason == "" && len(c.Message.ToolCalls) == 0 {
		// {"choices":[{}]}: a 200 that says nothing is no answer.
		return nil, "empty choice: no content, no tool calls and no finish reason"
	}
	return cr.Proto(), ""
}

// decodeChunk maps the data of one stream event to a chunk (its first
// choice). upstreamErr reports an error event instead ({"error": ...}).
func decodeChunk(data []byte) (ch *detourv1.CompleteChunk, upstreamErr bool, err error) {
	var c chatwire.Chunk
	if err := chatwire.Unmarshal(data, &c); err != nil {
		return nil, false, err
	}
	if present(c.Error) {
		return nil, true, nil
	}
	return c.Proto(), false, nil
}

// present reports whether a JSON field was sent with a value other than null.
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// firstNonSpace returns the index of the first byte of b that is not JSON
// whitespace, or -1.
func firstNonSpace(b []byte) int {
	return bytes.IndexFunc(b, func(r rune) bool { return r != ' ' && r != '\n' && r != '\r' && r != '\t' })
}
