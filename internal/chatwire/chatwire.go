// Package chatwire is the OpenAI chat completions JSON wire format, with
// DeepSeek's additions (reasoning_content, thinking, prompt_cache_hit_tokens
// and prompt_cache_miss_tokens, user_id), and its mapping to detour.v1 both
// ways. It is the one copy of these types: provider sends a Request
// upstream and reads a Response or Chunks back (NewRequest, Response.Proto,
// Chunk.Proto); the HTTP face of server reads a Request from a client and
// answers with a Response or Chunks (Request.Proto, NewResponse, NewChunk).
//
// Decoding is lenient where OpenAI's API is: a message's content may be a
// string, null or an array of text parts; stop may be a string or a list; a
// tool call's arguments may be JSON text or, as some OpenAI-compatible
// servers send them, the object itself.
//
// Every type is a plain value; none is safe for concurrent modification.
package chatwire

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"
)

// Request is a chat completion request.
type Request struct {
	Model               string          `json:"model"`
	Messages            []Message       `json:"messages"`
	Temperature         *float64        `json:"temperature,omitempty"`
	TopP                *float64        `json:"top_p,omitempty"`
	MaxTokens           int32           `json:"max_tokens,omitempty"`
	MaxCompletionTokens int32           `json:"max_completion_tokens,omitempty"`
	Stop                Strings         `json:"stop,omitempty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty,omitempty"`
	PresencePenalty     *float64        `json:"presence_penalty,omitempty"`
	Seed                *int64          `json:"seed,omitempty"`
	Logprobs            bool            `json:"logprobs,omitempty"`
	TopLogprobs         *int32          `json:"top_logprobs,omitempty"`
	Tools               []Tool          `json:"tools,omitempty"`
	ToolChoice          *ToolChoice     `json:"tool_choice,omitempty"`
	ParallelToolCalls   *bool           `json:"parallel_tool_calls,omitempty"`
	ResponseFormat      *ResponseFormat `json:"response_format,omitempty"`
	Thinking            *Thinking       `json:"thinking,omitempty"`
	ReasoningEffort     string          `json:"reasoning_effort,omitempty"`
	User                string          `json:"user,omitempty"`
	UserID              string          `json:"user_id,omitempty"`
	Stream              bool            `json:"stream,omitempty"`
	StreamOptions       *StreamOptions  `json:"stream_options,omitempty"`
	// N is the number of choices asked for; detour answers with one.
	N *int64 `json:"n,omitempty"`
	// Detour holds detour's own hints (routing, cache); an upstream never
	// gets it.
	Detour *RequestExtension `json:"detour,omitempty"`
}

// Message is one turn of the conversation.
type Message struct {
	Role string `json:"role"`
	// Content is the turn's text; nil is null (an assistant turn that only
	// calls tools).
	Content          *Content   `json:"content"`
	Name             string     `json:"name,omitempty"`
	ReasoningContent string     `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID       string     `json:"tool_call_id,omitempty"`
	// Prefix marks the last, assistant, turn as the start of the answer
	// (DeepSeek's prefix completion).
	Prefix bool `json:"prefix,omitempty"`
}

// ToolCall is a tool call of an assistant turn or of an answer.
type ToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function FunctionCall `json:"function"`
}

// FunctionCall names a function and carries its arguments.
type FunctionCall struct {
	Name      string    `json:"name"`
	Arguments Arguments `json:"arguments"`
}

// Arguments is a tool call's arguments: a JSON string holding JSON text, as
// OpenAI sends it; an object sent as itself is taken as its text.
type Arguments string

// UnmarshalJSON implements json.Unmarshaler.
func (a *Arguments) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		s, err := unquote(data)
		if err != nil {
			return err
		}
		*a = Arguments(s)
		return nil
	}
	if string(data) == "null" {
		*a = ""
		return nil
	}
	*a = Arguments(data)
	return nil
}

// Content is a message's text. It decodes from a string, or from an array
// of content parts whose text parts are joined with newlines; a part of any
// other type (an image, audio, a file) is refused, as detour carries text
// only.
type Content string

// ErrContentPart is returned for a content part that is not text.
var ErrContentPart = errors.New("content parts must be of type text: detour carries text only")

// UnmarshalJSON implements json.Unmarshaler.
func (c *Content) UnmarshalJSON(data []byte) error {
	switch {
	case len(data) > 0 && data[0] == '"':
		s, err := unquote(data)
		if err != nil {
			return err
		}
		*c = Content(s)
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
		for i, p := range parts {
			if p.Type != "text" {
				return ErrContentPart
			}
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(p.Text)
		}
		*c = Content(b.String())
	default:
		return errors.New("message content must be a string, null or an array of text parts")
	}
	return nil
}

// unquote decodes the JSON string data. A string with nothing to unescape,
// the usual case, is taken as it is, without a second pass of the decoder.
func unquote(data []byte) (string, error) {
	if len(data) >= 2 && data[0] == '"' && data[len(data)-1] == '"' {
		inner := data[1 : len(data)-1]
		if bytes.IndexByte(inner, '\\') < 0 && bytes.IndexByte(inner, '"') < 0 && utf8.Valid(inner) && !hasControl(inner) {
			return string(inner), nil
		}
	}
	var s string
	err := Unmarshal(data, &s)
	return s, err
}

func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// Strings is a list of strings that also decodes from one string (OpenAI's
// stop).
type Strings []string

// UnmarshalJSON implements json.Unmarshaler.
func (s *Strings) UnmarshalJSON(data []byte) error {
	switch {
	case string(data) == "null":
		*s = nil
		return nil
	case len(data) > 0 && data[0] == '"':
		v, err := unquote(data)
		if err != nil {
			return err
		}
		*s = Strings{v}
		return nil
	}
	var v []string
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*s = v
	return nil
}

// Tool is a tool the model may call.
type Tool struct {
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

// Function describes a function the model may call.
type Function struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// ToolChoice is "none", "auto" or "required" (Mode), or forces a call of
// one function (Function): {"type":"function","function":{"name":...}}.
type ToolChoice struct {
	Mode     string
	Function string
}

// MarshalJSON implements json.Marshaler.
func (t ToolChoice) MarshalJSON() ([]byte, error) {
	if t.Function == "" {
		return json.Marshal(t.Mode)
	}
	b := []byte(`{"type":"function","function":{"name":`)
	name, err := json.Marshal(t.Function)
	if err != nil {
		return nil, err
	}
	b = append(b, name...)
	return append(b, "}}"...), nil
}

// errToolChoice is returned for a tool_choice of neither shape.
var errToolChoice = errors.New(`tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}`)

// UnmarshalJSON implements json.Unmarshaler.
func (t *ToolChoice) UnmarshalJSON(data []byte) error {
	*t = ToolChoice{}
	if len(data) > 0 && data[0] == '"' {
		s, err := unquote(data)
		if err != nil {
			return err
		}
		t.Mode = s
		return nil
	}
	var fn struct {
		Type     string `json:"type"`
		Function *struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(data, &fn); err != nil || fn.Function == nil || fn.Function.Name == "" {
		return errToolChoice
	}
	if fn.Type != "" && fn.Type != "function" {
		return errToolChoice
	}
	t.Function = fn.Function.Name
	return nil
}

// ResponseFormat constrains the answer's content.
type ResponseFormat struct {
	Type       string      `json:"type"`
	JSONSchema *JSONSchema `json:"json_schema,omitempty"`
}

// JSONSchema is the schema of a "json_schema" response format.
type JSONSchema struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

// Thinking switches DeepSeek's thinking mode.
type Thinking struct {
	Type string `json:"type"`
}

// StreamOptions are a streamed request's options.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// RequestExtension is the "detour" member of a request: detour.v1's
// routing and cache hints, which OpenAI's JSON has no member for.
type RequestExtension struct {
	Routing *Routing    `json:"routing,omitempty"`
	Cache   *CacheHints `json:"cache,omitempty"`
}

// Routing are detour.v1.RoutingHints.
type Routing struct {
	PreferRegion string `json:"prefer_region,omitempty"`
	NoFallback   bool   `json:"no_fallback,omitempty"`
}

// CacheHints are detour.v1.CacheHints; durations are written as Go and
// protobuf JSON write them ("30s", "1.5s", "2m").
type CacheHints struct {
	NoCache    bool   `json:"no_cache,omitempty"`
	ForceCache bool   `json:"force_cache,omitempty"`
	MaxStale   string `json:"max_stale,omitempty"`
	TTL        string `json:"ttl,omitempty"`
}
