package spend

import (
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// The estimate of a call's tokens, reserved before the call and replaced
// by the provider's usage after it. It follows OpenAI's rule of thumb for
// English text, about 4 bytes (UTF-8) a token, plus the framing of each
// message:
//
//	prompt     = 3 + Σ messages (4 + ⌈bytes/4⌉) + ⌈tool definition bytes/4⌉
//	completion = max_completion_tokens, else max_tokens, else
//	             spend.completion_estimate (256)
//
// where a message's bytes are its content, name, reasoning and tool calls
// (names and arguments), and a tool's are its name, description and
// parameters. CJK text (3 bytes a character, about 0.6 tokens each for
// DeepSeek) comes out about 1.6 times too high, which reserves more, never
// less; the settlement charges what the provider reported either way.
const (
	bytesPerToken    = 4
	tokensPerReply   = 3 // every reply is primed with a few tokens
	tokensPerMessage = 4 // role and separators
)

// Estimate is what a call is expected to spend, in tokens.
type Estimate struct {
	Prompt, Completion int64
}

// Total is the prompt and completion estimate.
func (e Estimate) Total() int64 { return e.Prompt + e.Completion }

// PromptTokens is the estimated prompt tokens of req.
func PromptTokens(req *detourv1.CompleteRequest) int64 {
	n := int64(tokensPerReply)
	for _, m := range req.GetMessages() {
		b := len(m.GetContent()) + len(m.GetName()) + len(m.GetReasoningContent())
		for _, tc := range m.GetToolCalls() {
			b += len(tc.GetFunction().GetName()) + len(tc.GetFunction().GetArguments())
		}
		n += tokensPerMessage + TextTokens(b)
	}
	b := 0
	for _, t := range req.GetTools() {
		f := t.GetFunction()
		b += len(f.GetName()) + len(f.GetDescription()) + len(f.GetParameters())
	}
	return n + TextTokens(b)
}

// TextTokens is the estimated tokens of n bytes of text: ⌈n/4⌉.
func TextTokens(n int) int64 {
	return (int64(n) + bytesPerToken - 1) / bytesPerToken
}

// estimate is the reservation of req, with def the completion estimate of
// a request that sets no maximum.
func estimate(req *detourv1.CompleteRequest, def int64) Estimate {
	c := int64(req.GetMaxCompletionTokens())
	if c <= 0 {
		c = int64(req.GetMaxTokens())
	}
	if c <= 0 {
		c = def
	}
	return Estimate{Prompt: PromptTokens(req), Completion: c}
}

// Tokens are the token counts of one answer, as its provider reported them
// (or as estimated, for an answer that came without usage).
type Tokens struct {
	// Prompt and Completion are the provider's prompt_tokens and
	// completion_tokens; CacheHit and CacheMiss split Prompt by the
	// provider's context cache when it says so; Reasoning is the part of
	// Completion spent thinking.
	Prompt, Completion, CacheHit, CacheMiss, Reasoning int64
}

// Total is the prompt and completion tokens: what a token rate or a budget
// in tokens counts.
func (t Tokens) Total() int64 { return t.Prompt + t.Completion }

// TokensOf returns the counts of u; nil counts nothing.
func TokensOf(u *detourv1.Usage) Tokens {
	return Tokens{
		Prompt: int64(u.GetPromptTokens()), Completion: int64(u.GetCompletionTokens()),
		CacheHit: int64(u.GetPromptCacheHitTokens()), CacheMiss: int64(u.GetPromptCacheMissTokens()),
		Reasoning: int64(u.GetReasoningTokens()),
	}
}

// AnswerTokens estimates the tokens of an answer that came without usage:
// the prompt of req and the text of the answer.
func AnswerTokens(req *detourv1.CompleteRequest, resp *detourv1.CompleteResponse) Tokens {
	b := len(resp.GetContent()) + len(resp.GetReasoningContent())
	for _, tc := range resp.GetToolCalls() {
		b += len(tc.GetFunction().GetName()) + len(tc.GetFunction().GetArguments())
	}
	return Tokens{Prompt: PromptTokens(req), Completion: TextTokens(b)}
}

// ChunkBytes is the text a stream chunk carries, for a stream whose usage
// never came (cut mid-way): see TextTokens.
func ChunkBytes(ch *detourv1.CompleteChunk) int {
	b := len(ch.GetDelta()) + len(ch.GetReasoningDelta())
	for _, d := range ch.GetToolCallDeltas() {
		b += len(d.GetFunction().GetName()) + len(d.GetFunction().GetArguments())
	}
	return b
}
