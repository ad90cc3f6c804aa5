package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// The OpenAI chat completions wire format, with DeepSeek's additions
// (reasoning_content, thinking, prompt_cache_hit_tokens and
// prompt_cache_miss_tokens, user_id): every field of detour.v1 maps to its
// JSON member and back, unary and streamed.

type chatRequest struct {
	Model               string              `json:"model"`
	Messages            []chatMessage       `json:"messages"`
	Temperature         *float64            `json:"temperature,omitempty"`
	TopP                *float64            `json:"top_p,omitempty"`
	MaxTokens           int32               `json:"max_tokens,omitempty"`
	MaxCompletionTokens int32               `json:"max_completion_tokens,omitempty"`
	Stop                []string            `json:"stop,omitempty"`
	FrequencyPenalty    *float64            `json:"frequency_penalty,omitempty"`
	PresencePenalty     *float64            `json:"presence_penalty,omitempty"`
	Seed                *int64              `json:"seed,omitempty"`
	Logprobs            bool                `json:"logprobs,omitempty"`
	TopLogprobs         *int32              `json:"top_logprobs,omitempty"`
	Tools               []chatTool          `json:"tools,omitempty"`
	ToolChoice          any                 `json:"tool_choice,omitempty"`
	ParallelToolCalls   *bool               `json:"parallel_tool_calls,omitempty"`
	ResponseFormat      *chatResponseFormat `json:"response_format,omitempty"`
	Thinking            *chatThinking       `json:"thinking,omitempty"`
	ReasoningEffort     string              `json:"reasoning_effort,omitempty"`
	User                string              `json:"user,omitempty"`
	UserID              string              `json:"user_id,omitempty"`
	Stream              bool                `json:"stream,omitempty"`
	StreamOptions       *streamOptions      `json:"stream_options,omitempty"`
}

type chatMessage struct {
	Role string `json:"role"`
	// Content points at the proto message's text; nil sends null (an
	// assistant turn that only calls tools).
	Content          *string        `json:"content"`
	Name             string         `json:"name,omitempty"`
	ReasoningContent string         `json:"reasoning_content,omitempty"`
	ToolCalls        []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID       string         `json:"tool_call_id,omitempty"`
	// Prefix marks the last, assistant, turn as the start of the answer
	// (DeepSeek's prefix completion).
	Prefix bool `json:"prefix,omitempty"`
}

type chatToolCall struct {
	ID       string           `json:"id"`
	Type     string           `json:"type"`
	Function chatFunctionCall `json:"function"`
}

type chatFunctionCall struct {
	Name      string  `json:"name"`
	Arguments argText `json:"arguments"`
}

// argText is a tool call's arguments: a JSON string holding JSON text, as
// OpenAI sends it; some OpenAI-compatible servers send the object itself,
// which is taken as its text.
type argText string

func (a *argText) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*a = argText(s)
		return nil
	}
	if string(data) == "null" {
		*a = ""
		return nil
	}
	*a = argText(data)
	return nil
}

type chatTool struct {
	Type     string       `json:"type"`
	Function chatFunction `json:"function"`
}

type chatFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

type chatToolChoice struct {
	Type     string `json:"type"`
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

type chatResponseFormat struct {
	Type       string          `json:"type"`
	JSONSchema *chatJSONSchema `json:"json_schema,omitempty"`
}

type chatJSONSchema struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

type chatThinking struct {
	Type string `json:"type"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// rawJSON returns s as a raw JSON member value, nil for an empty s.
func rawJSON(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

// newChatRequest maps req to the upstream's JSON request. tenantAs is the
// backend's send_tenant_as and tenant the caller's.
func newChatRequest(req *detourv1.CompleteRequest, stream bool, tenantAs, tenant string) *chatRequest {
	cr := &chatRequest{
		Model:               req.GetModel(),
		Messages:            make([]chatMessage, len(req.GetMessages())),
		Temperature:         req.Temperature,
		TopP:                req.TopP,
		MaxTokens:           max(req.GetMaxTokens(), 0),
		MaxCompletionTokens: max(req.GetMaxCompletionTokens(), 0),
		Stop:                req.GetStop(),
		FrequencyPenalty:    req.FrequencyPenalty,
		PresencePenalty:     req.PresencePenalty,
		Seed:                req.Seed,
		Logprobs:            req.GetLogprobs(),
		TopLogprobs:         req.TopLogprobs,
		ParallelToolCalls:   req.ParallelToolCalls,
		ReasoningEffort:     req.GetReasoningEffort(),
		User:                req.GetUser(),
	}
	for i, m := range req.GetMessages() {
		cm := chatMessage{Role: m.GetRole(), Content: &m.Content, Name: m.GetName(),
			ReasoningContent: m.GetReasoningContent(), ToolCallID: m.GetToolCallId(), Prefix: m.GetPrefix()}
		if len(m.GetToolCalls()) > 0 {
			cm.ToolCalls = make([]chatToolCall, len(m.GetToolCalls()))
			for j, tc := range m.GetToolCalls() {
				cm.ToolCalls[j] = chatToolCall{ID: tc.GetId(), Type: orFunction(tc.GetType()),
					Function: chatFunctionCall{Name: tc.GetFunction().GetName(), Arguments: argText(tc.GetFunction().GetArguments())}}
			}
			if m.GetContent() == "" {
				cm.Content = nil
			}
		}
		cr.Messages[i] = cm
	}
	if len(req.GetTools()) > 0 {
		cr.Tools = make([]chatTool, len(req.GetTools()))
		for i, t := range req.GetTools() {
			f := t.GetFunction()
			cr.Tools[i] = chatTool{Type: orFunction(t.GetType()), Function: chatFunction{
				Name: f.GetName(), Description: f.GetDescription(), Parameters: rawJSON(f.GetParameters()), Strict: f.Strict}}
		}
	}
	switch c := req.GetToolChoice().GetChoice().(type) {
	case *detourv1.ToolChoice_Mode:
		cr.ToolChoice = c.Mode
	case *detourv1.ToolChoice_Function:
		tc := &chatToolChoice{Type: "function"}
		tc.Function.Name = c.Function
		cr.ToolChoice = tc
	}
	if rf := req.GetResponseFormat(); rf != nil {
		cr.ResponseFormat = &chatResponseFormat{Type: rf.GetType()}
		if js := rf.GetJsonSchema(); js != nil {
			cr.ResponseFormat.JSONSchema = &chatJSONSchema{Name: js.GetName(), Description: js.GetDescription(),
				Schema: rawJSON(js.GetSchema()), Strict: js.Strict}
		}
	}
	if th := req.GetThinking(); th != nil {
		cr.Thinking = &chatThinking{Type: th.GetType()}
	}
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
		cr.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	return cr
}

func orFunction(t string) string {
	if t == "" {
		return "function"
	}
	return t
}

// sets reports whether cr writes the JSON member name.
func (cr *chatRequest) sets(name string) bool {
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
	body, err := json.Marshal(cr)
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
		if cr.sets(m.name) {
			continue
		}
		body = append(body, ',')
		body = strconv.AppendQuote(body, m.name)
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

type chatResponse struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Choices []struct {
		Message      chatAnswer    `json:"message"`
		Logprobs     *chatLogprobs `json:"logprobs"`
		FinishReason string        `json:"finish_reason"`
	} `json:"choices"`
	Usage *chatUsage      `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// chatAnswer is an answer's message, or a stream's delta of one.
type chatAnswer struct {
	Content          string          `json:"content"`
	ReasoningContent string          `json:"reasoning_content"`
	ToolCalls        []chatToolDelta `json:"tool_calls"`
}

// chatToolDelta is a tool call of an answer, or a piece of one in a stream
// (with its index).
type chatToolDelta struct {
	Index    int32             `json:"index"`
	ID       string            `json:"id"`
	Type     string            `json:"type"`
	Function *chatFunctionCall `json:"function"`
}

type chatChunk struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Choices []struct {
		Delta        chatAnswer    `json:"delta"`
		Logprobs     *chatLogprobs `json:"logprobs"`
		FinishReason string        `json:"finish_reason"`
	} `json:"choices"`
	Usage *chatUsage      `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// decodeAnswer maps a unary answer body to its first choice. When the body
// is unusable it returns nil and says why.
func decodeAnswer(body []byte) (*detourv1.CompleteResponse, string) {
	var cr chatResponse
	if err := json.Unmarshal(body, &cr); err != nil {
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
	if c.Message.Content == "" && c.Message.ReasoningContent == "" && c.FinishReason == "" && len(c.Message.ToolCalls) == 0 {
		// {"choices":[{}]}: a 200 that says nothing is no answer.
		return nil, "empty choice: no content, no tool calls and no finish reason"
	}
	return &detourv1.CompleteResponse{
		Id:               cr.ID,
		Model:            cr.Model,
		Content:          c.Message.Content,
		ReasoningContent: c.Message.ReasoningContent,
		ToolCalls:        c.Message.toolCalls(),
		Logprobs:         c.Logprobs.proto(),
		FinishReason:     c.FinishReason,
		Usage:            cr.Usage.proto(),
	}, ""
}

// decodeChunk maps the data of one stream event to a chunk (its first
// choice). upstreamErr reports an error event instead ({"error": ...}).
func decodeChunk(data []byte) (ch *detourv1.CompleteChunk, upstreamErr bool, err error) {
	var c chatChunk
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, false, err
	}
	if present(c.Error) {
		return nil, true, nil
	}
	ch = &detourv1.CompleteChunk{Id: c.ID, Model: c.Model, Usage: c.Usage.proto()}
	if len(c.Choices) > 0 {
		d := &c.Choices[0]
		ch.Delta = d.Delta.Content
		ch.ReasoningDelta = d.Delta.ReasoningContent
		ch.ToolCallDeltas = d.Delta.toolCallDeltas()
		ch.Logprobs = d.Logprobs.proto()
		ch.FinishReason = d.FinishReason
	}
	return ch, false, nil
}

// present reports whether a JSON field was sent with a value other than null.
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

func (a *chatAnswer) toolCalls() []*detourv1.ToolCall {
	if len(a.ToolCalls) == 0 {
		return nil
	}
	out := make([]*detourv1.ToolCall, len(a.ToolCalls))
	for i, tc := range a.ToolCalls {
		out[i] = &detourv1.ToolCall{Id: tc.ID, Type: tc.Type, Function: tc.Function.proto()}
	}
	return out
}

func (a *chatAnswer) toolCallDeltas() []*detourv1.ToolCallDelta {
	if len(a.ToolCalls) == 0 {
		return nil
	}
	out := make([]*detourv1.ToolCallDelta, len(a.ToolCalls))
	for i, tc := range a.ToolCalls {
		out[i] = &detourv1.ToolCallDelta{Index: tc.Index, Id: tc.ID, Type: tc.Type, Function: tc.Function.proto()}
	}
	return out
}

func (f *chatFunctionCall) proto() *detourv1.FunctionCall {
	if f == nil {
		return nil
	}
	return &detourv1.FunctionCall{Name: f.Name, Arguments: string(f.Arguments)}
}

type chatLogprobs struct {
	Content []chatTokenLogprob `json:"content"`
}

type chatTokenLogprob struct {
	Token       string           `json:"token"`
	Logprob     float64          `json:"logprob"`
	Bytes       []int            `json:"bytes"`
	TopLogprobs []chatTopLogprob `json:"top_logprobs"`
}

type chatTopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// proto returns l, or nil when it holds no token.
func (l *chatLogprobs) proto() *detourv1.Logprobs {
	if l == nil || len(l.Content) == 0 {
		return nil
	}
	out := &detourv1.Logprobs{Content: make([]*detourv1.TokenLogprob, len(l.Content))}
	for i, t := range l.Content {
		tl := &detourv1.TokenLogprob{Token: t.Token, Logprob: t.Logprob, Bytes: byteList(t.Bytes)}
		for _, top := range t.TopLogprobs {
			tl.TopLogprobs = append(tl.TopLogprobs, &detourv1.TopLogprob{Token: top.Token, Logprob: top.Logprob, Bytes: byteList(top.Bytes)})
		}
		out.Content[i] = tl
	}
	return out
}

// byteList converts OpenAI's list of byte values; a list with a value that
// is not a byte is dropped.
func byteList(v []int) []byte {
	if len(v) == 0 {
		return nil
	}
	b := make([]byte, len(v))
	for i, x := range v {
		if x < 0 || x > 255 {
			return nil
		}
		b[i] = byte(x)
	}
	return b
}

type chatUsage struct {
	PromptTokens          int32  `json:"prompt_tokens"`
	CompletionTokens      int32  `json:"completion_tokens"`
	TotalTokens           int32  `json:"total_tokens"`
	PromptCacheHitTokens  *int32 `json:"prompt_cache_hit_tokens"`
	PromptCacheMissTokens *int32 `json:"prompt_cache_miss_tokens"`
	PromptTokensDetails   *struct {
		CachedTokens *int32 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
	CompletionTokensDetails *struct {
		ReasoningTokens *int32 `json:"reasoning_tokens"`
	} `json:"completion_tokens_details"`
}

func (u *chatUsage) proto() *detourv1.Usage {
	if u == nil {
		return nil
	}
	out := &detourv1.Usage{
		PromptTokens:          u.PromptTokens,
		CompletionTokens:      u.CompletionTokens,
		TotalTokens:           u.TotalTokens,
		PromptCacheHitTokens:  u.PromptCacheHitTokens,
		PromptCacheMissTokens: u.PromptCacheMissTokens,
	}
	if out.PromptCacheHitTokens == nil && u.PromptTokensDetails != nil {
		out.PromptCacheHitTokens = u.PromptTokensDetails.CachedTokens
	}
	if u.CompletionTokensDetails != nil {
		out.ReasoningTokens = u.CompletionTokensDetails.ReasoningTokens
	}
	return out
}

// firstNonSpace returns the index of the first byte of b that is not JSON
// whitespace, or -1.
func firstNonSpace(b []byte) int {
	return bytes.IndexFunc(b, func(r rune) bool { return r != ' ' && r != '\n' && r != '\r' && r != '\t' })
}
