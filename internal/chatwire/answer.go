package chatwire

import "encoding/json"

// Response is a unary chat completion answer.
type Response struct {
	ID      string   `json:"id"`
	Object  string   `json:"object,omitempty"`
	Created int64    `json:"created,omitempty"`
	Model   string   `json:"model"`
	Choices []Choice `json:"choices"`
	Usage   *Usage   `json:"usage,omitempty"`
	// Error is an error object some upstreams send with a 200.
	Error json.RawMessage `json:"error,omitempty"`
	// Detour says who answered and how (detour's HTTP face only).
	Detour *AnswerExtension `json:"detour,omitempty"`
}

// Choice is one choice of a unary answer.
type Choice struct {
	Index        int32     `json:"index"`
	Message      Answer    `json:"message"`
	Logprobs     *Logprobs `json:"logprobs"`
	FinishReason string    `json:"finish_reason"`
}

// Answer is the message of a unary answer.
type Answer struct {
	Role string `json:"role,omitempty"`
	// Content is nil for null (an answer that only calls tools).
	Content          *string    `json:"content"`
	ReasoningContent string     `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolCall `json:"tool_calls,omitempty"`
}

// Chunk is one event of a streamed answer.
type Chunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object,omitempty"`
	Created int64         `json:"created,omitempty"`
	Model   string        `json:"model"`
	Choices []ChunkChoice `json:"choices"`
	// Usage is written as null on every chunk but the last of a stream that
	// asked for it (stream_options.include_usage), as OpenAI does.
	Usage  *Usage           `json:"usage"`
	Error  json.RawMessage  `json:"error,omitempty"`
	Detour *AnswerExtension `json:"detour,omitempty"`
}

// ChunkChoice is the choice of a chunk.
type ChunkChoice struct {
	Index        int32     `json:"index"`
	Delta        Delta     `json:"delta"`
	Logprobs     *Logprobs `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

// Delta is the next piece of a streamed answer.
type Delta struct {
	Role             string      `json:"role,omitempty"`
	Content          string      `json:"content,omitempty"`
	ReasoningContent string      `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolDelta `json:"tool_calls,omitempty"`
}

// ToolDelta is a piece of a streamed tool call: the first piece of call
// Index carries its id, type and name, later ones more arguments.
type ToolDelta struct {
	Index    int32         `json:"index"`
	ID       string        `json:"id,omitempty"`
	Type     string        `json:"type,omitempty"`
	Function *FunctionCall `json:"function,omitempty"`
}

// Logprobs are the log probabilities of an answer's tokens.
type Logprobs struct {
	Content []TokenLogprob `json:"content"`
}

// TokenLogprob is one token with its log probability and alternatives.
type TokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is one likely token at a position.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// Usage counts tokens. Both spellings of the cache-hit tokens are read and
// written: DeepSeek's prompt_cache_hit_tokens and OpenAI's
// prompt_tokens_details.cached_tokens.
type Usage struct {
	PromptTokens            int32              `json:"prompt_tokens"`
	CompletionTokens        int32              `json:"completion_tokens"`
	TotalTokens             int32              `json:"total_tokens"`
	PromptCacheHitTokens    *int32             `json:"prompt_cache_hit_tokens,omitempty"`
	PromptCacheMissTokens   *int32             `json:"prompt_cache_miss_tokens,omitempty"`
	PromptTokensDetails     *PromptDetails     `json:"prompt_tokens_details,omitempty"`
	CompletionTokensDetails *CompletionDetails `json:"completion_tokens_details,omitempty"`
}

// PromptDetails is OpenAI's prompt_tokens_details.
type PromptDetails struct {
	CachedTokens *int32 `json:"cached_tokens,omitempty"`
}

// CompletionDetails is OpenAI's completion_tokens_details.
type CompletionDetails struct {
	ReasoningTokens *int32 `json:"reasoning_tokens,omitempty"`
}

// AnswerExtension is the "detour" member of an answer: who answered and
// how, as detour.v1's served_by, source, attempts and age. Clients that do
// not know it ignore it.
type AnswerExtension struct {
	ServedBy *ServedBy `json:"served_by,omitempty"`
	// Source is live, cache, stale_cache or fallback.
	Source string `json:"source"`
	// Attempts counts the upstream calls made (0 for a cache hit).
	Attempts int32 `json:"attempts"`
	// AgeMS is the age of a cached answer in milliseconds; absent for a
	// live one.
	AgeMS *int64 `json:"age_ms,omitempty"`
}

// ServedBy names the backend that answered.
type ServedBy struct {
	Region  string `json:"region"`
	Backend string `json:"backend"`
	// Kind is openai or detour.
	Kind string `json:"kind,omitempty"`
	Zone string `json:"zone,omitempty"`
}

// ErrorBody is OpenAI's error answer: {"error":{"message",...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error of an ErrorBody. Param and Code are null when
// unset.
type ErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// Model is one entry of GET /v1/models.
type Model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// ModelList is the answer of GET /v1/models.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}
