package fakellm_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// The richer OpenAI/DeepSeek JSON shapes, as a client decodes them.
type (
	fullUsage struct {
		PromptTokens          int `json:"prompt_tokens"`
		CompletionTokens      int `json:"completion_tokens"`
		TotalTokens           int `json:"total_tokens"`
		PromptCacheHitTokens  int `json:"prompt_cache_hit_tokens"`
		PromptCacheMissTokens int `json:"prompt_cache_miss_tokens"`
		PromptTokensDetails   struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
		CompletionTokensDetails struct {
			ReasoningTokens int `json:"reasoning_tokens"`
		} `json:"completion_tokens_details"`
	}
	toolCall struct {
		Index    int    `json:"index"`
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	}
	fullMessage struct {
		Role             string     `json:"role"`
		Content          *string    `json:"content"`
		ReasoningContent *string    `json:"reasoning_content"`
		ToolCalls        []toolCall `json:"tool_calls"`
	}
	logprobs struct {
		Content []struct {
			Token       string  `json:"token"`
			Logprob     float64 `json:"logprob"`
			Bytes       []int   `json:"bytes"`
			TopLogprobs []struct {
				Token string `json:"token"`
			} `json:"top_logprobs"`
		} `json:"content"`
	}
	fullCompletion struct {
		ID      string `json:"id"`
		Choices []struct {
			Message      fullMessage `json:"message"`
			Delta        fullMessage `json:"delta"`
			Logprobs     *logprobs   `json:"logprobs"`
			FinishReason *string     `json:"finish_reason"`
		} `json:"choices"`
		Usage *fullUsage `json:"usage"`
	}
)

// joined is a streamed answer put together.
type joined struct {
	content, reasoning string
	calls              []toolCall
	tokens             []string // logprobs' tokens
	finish             string
	usage              *fullUsage
	firstContent       int // index of the first event with content or a tool call
	lastReasoning      int // index of the last event with reasoning
}

func join(t *testing.T, body []byte) joined {
	t.Helper()
	events := sseEvents(t, body)
	if len(events) == 0 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]:\n%s", body)
	}
	j := joined{firstContent: -1, lastReasoning: -1}
	for i, e := range events[:len(events)-1] {
		var c fullCompletion
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("event %d %q: %v", i, e, err)
		}
		if c.Usage != nil {
			j.usage = c.Usage
		}
		d := c.Choices[0].Delta
		if d.ReasoningContent != nil && *d.ReasoningContent != "" {
			j.reasoning += *d.ReasoningContent
			j.lastReasoning = i
		}
		if (d.Content != nil && *d.Content != "") || len(d.ToolCalls) > 0 {
			if j.firstContent < 0 {
				j.firstContent = i
			}
		}
		if d.Content != nil {
			j.content += *d.Content
		}
		for _, tc := range d.ToolCalls {
			for len(j.calls) <= tc.Index {
				j.calls = append(j.calls, toolCall{Index: len(j.calls)})
			}
			call := &j.calls[tc.Index]
			if tc.ID != "" {
				call.ID, call.Type, call.Function.Name = tc.ID, tc.Type, tc.Function.Name
			}
			call.Function.Arguments += tc.Function.Arguments
		}
		if lp := c.Choices[0].Logprobs; lp != nil {
			for _, tl := range lp.Content {
				j.tokens = append(j.tokens, tl.Token)
			}
		}
		if f := c.Choices[0].FinishReason; f != nil {
			j.finish = *f
		}
	}
	return j
}

// unaryAndStream posts body without and with "stream": true.
func unaryAndStream(t *testing.T, f *fixture, body string) (fullCompletion, joined) {
	t.Helper()
	r := f.chat(t, body)
	if r.code != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.code, r.body)
	}
	var unary fullCompletion
	if err := json.Unmarshal(r.body, &unary); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
	r = f.chat(t, strings.Replace(body, "{", `{"stream":true,`, 1))
	if r.code != http.StatusOK || r.err != nil {
		t.Fatalf("stream: status %d, error %v", r.code, r.err)
	}
	return unary, join(t, r.body)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A request that thinks streams its think phase as reasoning_content
// deltas before the answer, and counts it in usage as reasoning tokens.
func TestChatReasoning(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west", Settings: fakellm.Settings{ThinkTokens: 6}})
	tests := []struct {
		name   string
		body   string
		thinks bool
	}{
		{"reasoner", `{"model":"deepseek-reasoner","messages":[{"role":"user","content":"why is the sky blue"}]}`, true},
		{"thinking enabled", `{"model":"deepseek-chat","thinking":{"type":"enabled"},"messages":[{"role":"user","content":"why"}]}`, true},
		{"thinking disabled", `{"model":"deepseek-reasoner","thinking":{"type":"disabled"},"messages":[{"role":"user","content":"why"}]}`, false},
		{"chat", `{"model":"deepseek-chat","messages":[{"role":"user","content":"why"}]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unary, streamed := unaryAndStream(t, f, tt.body)
			m := unary.Choices[0].Message
			if got := m.ReasoningContent != nil && *m.ReasoningContent != ""; got != tt.thinks {
				t.Fatalf("reasoning_content %q, want some: %v", deref(m.ReasoningContent), tt.thinks)
			}
			if diff := cmp.Diff(streamed.reasoning, deref(m.ReasoningContent)); diff != "" {
				t.Errorf("streamed reasoning (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(streamed.content, deref(m.Content)); diff != "" {
				t.Errorf("streamed content (-got +want):\n%s", diff)
			}
			wantReasoning := 0
			if tt.thinks {
				wantReasoning = 6
				if streamed.lastReasoning >= streamed.firstContent {
					t.Errorf("reasoning event %d comes after content event %d", streamed.lastReasoning, streamed.firstContent)
				}
			}
			if got := unary.Usage.CompletionTokensDetails.ReasoningTokens; got != wantReasoning {
				t.Errorf("usage reasoning_tokens = %d, want %d", got, wantReasoning)
			}
			if diff := cmp.Diff(streamed.usage, unary.Usage); diff != "" {
				t.Errorf("streamed usage (-got +want):\n%s", diff)
			}
		})
	}
}

const weatherTools = `"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather in a city",
	"parameters":{"type":"object","properties":{"unit":{"type":"string"},"city":{"type":"string"}},"required":["city"]}}},
	{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{"zone":{"type":"string"}}}}}]`

// A request that offers tools gets a call whose arguments stream in
// pieces; the tool's result sent back gets a text answer.
func TestChatToolCalls(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west"})
	user := `{"role":"user","content":"Paris please"}`
	t.Run("call", func(t *testing.T) {
		unary, streamed := unaryAndStream(t, f, `{"model":"deepseek-chat",`+weatherTools+`,"messages":[`+user+`]}`)
		m := unary.Choices[0].Message
		if m.Content != nil || len(m.ToolCalls) != 1 || deref(unary.Choices[0].FinishReason) != "tool_calls" {
			t.Fatalf("answer %+v, finish %q: want one tool call, null content, finish tool_calls", m, deref(unary.Choices[0].FinishReason))
		}
		tc := m.ToolCalls[0]
		if tc.Function.Name != "get_weather" || tc.Function.Arguments != `{"city":"Paris"}` || !strings.HasPrefix(tc.ID, "call_") {
			t.Errorf("tool call %+v, want get_weather({\"city\":\"Paris\"}) with an id", tc)
		}
		if diff := cmp.Diff(streamed.calls, m.ToolCalls); diff != "" {
			t.Errorf("streamed tool calls (-got +want):\n%s", diff)
		}
		if streamed.finish != "tool_calls" {
			t.Errorf("streamed finish %q, want tool_calls", streamed.finish)
		}
	})
	t.Run("forced function", func(t *testing.T) {
		unary, _ := unaryAndStream(t, f, `{"model":"deepseek-chat",`+weatherTools+`,"tool_choice":{"type":"function","function":{"name":"get_time"}},"messages":[`+user+`]}`)
		if got := unary.Choices[0].Message.ToolCalls; len(got) != 1 || got[0].Function.Name != "get_time" || got[0].Function.Arguments != `{"zone":"Paris"}` {
			t.Errorf("tool calls %+v, want get_time with the first property", got)
		}
	})
	t.Run("none", func(t *testing.T) {
		unary, _ := unaryAndStream(t, f, `{"model":"deepseek-chat",`+weatherTools+`,"tool_choice":"none","messages":[`+user+`]}`)
		if m := unary.Choices[0].Message; len(m.ToolCalls) != 0 || !strings.Contains(deref(m.Content), "echo: Paris please") {
			t.Errorf("answer %+v, want text", m)
		}
	})
	t.Run("result sent back", func(t *testing.T) {
		unary, streamed := unaryAndStream(t, f, `{"model":"deepseek-chat",`+weatherTools+`,"messages":[`+user+`,
			{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
			{"role":"tool","tool_call_id":"call_1","content":"21 degrees and sunny"}]}`)
		m := unary.Choices[0].Message
		if len(m.ToolCalls) != 0 || !strings.HasPrefix(deref(m.Content), "[eu-west] result: 21 degrees and sunny (ref ") {
			t.Errorf("answer %+v, want the result in text", m)
		}
		if streamed.content != deref(m.Content) {
			t.Errorf("streamed %q, unary %q", streamed.content, deref(m.Content))
		}
		// The conversation before the last message counts as cached.
		if u := unary.Usage; u.PromptCacheHitTokens == 0 || u.PromptCacheHitTokens+u.PromptCacheMissTokens != u.PromptTokens ||
			u.PromptTokensDetails.CachedTokens != u.PromptCacheHitTokens {
			t.Errorf("usage %+v, want cache hits for the earlier messages", u)
		}
	})
	t.Run("result of no call", func(t *testing.T) {
		r := f.chat(t, `{"model":"deepseek-chat","messages":[`+user+`,{"role":"tool","tool_call_id":"call_9","content":"x"}]}`)
		if r.code != http.StatusBadRequest {
			t.Errorf("status %d, want 400: %s", r.code, r.body)
		}
	})
}

// JSON mode answers a JSON object, or, at json_blank_rate, blank content.
func TestChatJSONMode(t *testing.T) {
	body := `{"model":"deepseek-chat","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"answer in json"}]}`
	f := start(t, fakellm.Config{Region: "eu-west"})
	unary, streamed := unaryAndStream(t, f, body)
	var obj map[string]string
	if err := json.Unmarshal([]byte(deref(unary.Choices[0].Message.Content)), &obj); err != nil || !strings.Contains(obj["answer"], "echo: answer in json") {
		t.Errorf("content %q is not the JSON answer (%v)", deref(unary.Choices[0].Message.Content), err)
	}
	if streamed.content != deref(unary.Choices[0].Message.Content) {
		t.Errorf("streamed %q, unary %q", streamed.content, deref(unary.Choices[0].Message.Content))
	}

	if err := f.srv.SetSettings(fakellm.Settings{JSONBlankRate: 1}); err != nil {
		t.Fatal(err)
	}
	unary, streamed = unaryAndStream(t, f, body)
	if c := deref(unary.Choices[0].Message.Content); strings.TrimSpace(c) != "" || c == "" || deref(unary.Choices[0].FinishReason) != "stop" {
		t.Errorf("content %q finish %q, want blank with stop", c, deref(unary.Choices[0].FinishReason))
	}
	if strings.TrimSpace(streamed.content) != "" || streamed.finish != "stop" {
		t.Errorf("streamed %q finish %q, want blank with stop", streamed.content, streamed.finish)
	}
	// Text requests are never blank.
	unary, _ = unaryAndStream(t, f, `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`)
	if strings.TrimSpace(deref(unary.Choices[0].Message.Content)) == "" {
		t.Error("a text answer came out blank")
	}
}

// logprobs asks for each content token's log probability.
func TestChatLogprobs(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west"})
	unary, streamed := unaryAndStream(t, f, `{"model":"deepseek-chat","logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"hi there"}]}`)
	lp := unary.Choices[0].Logprobs
	if lp == nil || len(lp.Content) != unary.Usage.CompletionTokens {
		t.Fatalf("logprobs %+v, want one per token", lp)
	}
	var tokens []string
	for _, c := range lp.Content {
		tokens = append(tokens, c.Token)
		if len(c.TopLogprobs) != 2 || c.Logprob >= 0 || string(rune(c.Bytes[0])) != c.Token[:1] {
			t.Errorf("token %+v, want 2 alternatives, a negative logprob and its bytes", c)
		}
	}
	if strings.Join(tokens, "") != deref(unary.Choices[0].Message.Content) {
		t.Errorf("tokens %q do not make the content", tokens)
	}
	if diff := cmp.Diff(streamed.tokens, tokens); diff != "" {
		t.Errorf("streamed tokens (-got +want):\n%s", diff)
	}
}

// A queued request gets its headers at once and keep-alives until the
// answer: empty lines before a unary answer, SSE comments in a stream.
func TestChatQueueKeepAlives(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west", Settings: fakellm.Settings{QueueDelay: 60 * time.Millisecond, KeepAliveInterval: 10 * time.Millisecond}})
	r := f.chat(t, helloBody)
	if r.code != http.StatusOK || !strings.HasPrefix(string(r.body), "\n") {
		t.Fatalf("status %d body %q, want 200 and keep-alive lines first", r.code, r.body)
	}
	var c completion
	if err := json.Unmarshal(r.body, &c); err != nil || !strings.Contains(c.Choices[0].Message.Content, "echo: Hello") {
		t.Errorf("answer after keep-alives %q does not decode: %v", r.body, err)
	}
	r = f.chat(t, strings.Replace(helloBody, "{", `{"stream":true,`, 1))
	if !strings.HasPrefix(string(r.body), ": keep-alive\n\n") {
		t.Errorf("stream %q, want keep-alive comments first", r.body)
	}
	body := strings.ReplaceAll(string(r.body), ": keep-alive\n\n", "")
	if j := join(t, []byte(body)); !strings.Contains(j.content, "echo: Hello") {
		t.Errorf("streamed answer %q after the keep-alives", j.content)
	}
}

// An account out of credit answers 402 Insufficient Balance (gRPC
// RESOURCE_EXHAUSTED).
func TestChatExhausted(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west", Settings: fakellm.Settings{ExhaustedRate: 1}})
	r := f.chat(t, helloBody)
	var e apiError
	if err := json.Unmarshal(r.body, &e); err != nil || r.code != http.StatusPaymentRequired || e.Error.Message != "Insufficient Balance" {
		t.Errorf("status %d body %s, want 402 Insufficient Balance", r.code, r.body)
	}
	_, err := f.router.Complete(context.Background(), helloRequest())
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != "Insufficient Balance" {
		t.Errorf("gRPC error %v, want RESOURCE_EXHAUSTED Insufficient Balance", err)
	}
	if diff := cmp.Diff(settled(t, f.srv), fakellm.Stats{Total: 2, Exhausted: 2}); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

// Over gRPC the same requests get the same answers.
func TestGRPCFeatures(t *testing.T) {
	f := start(t, fakellm.Config{Region: "eu-west", Settings: fakellm.Settings{ThinkTokens: 3}})
	req := &detourv1.CompleteRequest{
		Model:    "deepseek-reasoner",
		Messages: []*detourv1.Message{{Role: "user", Content: "Paris please"}},
		Tools: []*detourv1.Tool{{Type: "function", Function: &detourv1.FunctionDefinition{Name: "get_weather",
			Parameters: `{"type":"object","properties":{"city":{"type":"string"}}}`}}},
		Logprobs: true,
	}
	got, err := f.router.Complete(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetReasoningContent() == "" || len(got.GetToolCalls()) != 1 || got.GetToolCalls()[0].GetFunction().GetArguments() != `{"city":"Paris"}` ||
		got.GetFinishReason() != "tool_calls" || got.GetUsage().GetReasoningTokens() != 3 {
		t.Errorf("answer %v, want reasoning, a get_weather call and 3 reasoning tokens", got)
	}
	st, err := f.router.StreamComplete(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := recvAll(st)
	if err != nil {
		t.Fatal(err)
	}
	var reasoning, args strings.Builder
	for _, c := range chunks {
		reasoning.WriteString(c.GetReasoningDelta())
		for _, d := range c.GetToolCallDeltas() {
			args.WriteString(d.GetFunction().GetArguments())
		}
	}
	if reasoning.String() != got.GetReasoningContent() || args.String() != got.GetToolCalls()[0].GetFunction().GetArguments() {
		t.Errorf("streamed reasoning %q args %q, want the unary answer's", reasoning.String(), args.String())
	}
	if diff := cmp.Diff(chunks[len(chunks)-1].GetUsage(), got.GetUsage(), protocmp.Transform()); diff != "" {
		t.Errorf("streamed usage (-got +want):\n%s", diff)
	}

	// The tool's result sent back; JSON mode with logprobs.
	req.Messages = append(req.Messages,
		&detourv1.Message{Role: "assistant", ToolCalls: got.GetToolCalls()},
		&detourv1.Message{Role: "tool", ToolCallId: got.GetToolCalls()[0].GetId(), Content: "sunny"})
	req.ResponseFormat = &detourv1.ResponseFormat{Type: "json_object"}
	got, err = f.router.Complete(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got.GetContent(), `{"answer": "[eu-west] result: sunny`) || len(got.GetLogprobs().GetContent()) == 0 {
		t.Errorf("answer %v, want the JSON result with logprobs", got)
	}
}
