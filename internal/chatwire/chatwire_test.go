package chatwire

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name, body string
		want       string // the detour.v1 request, protojson
		wantExtra  string
		wantErr    string // Describe's param, or "-" for an error without one
	}{
		{
			name: "everything",
			body: `{"model":"deepseek-chat","messages":[{"role":"system","content":"Be brief.","name":"ops"},
				{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
				{"role":"assistant","content":null,"reasoning_content":"r","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
				{"role":"tool","content":"42","tool_call_id":"c1"}],
				"temperature":0.5,"top_p":0.9,"max_tokens":10,"max_completion_tokens":20,"stop":"END",
				"frequency_penalty":0.1,"presence_penalty":-0.1,"seed":7,"logprobs":true,"top_logprobs":2,
				"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"},"strict":true}}],
				"tool_choice":{"type":"function","function":{"name":"f"}},"parallel_tool_calls":false,
				"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object"},"strict":true}},
				"thinking":{"type":"enabled"},"reasoning_effort":"high","user":"u1","n":1,"stream":true,
				"stream_options":{"include_usage":true},
				"detour":{"routing":{"prefer_region":"eu","no_fallback":true},"cache":{"no_cache":true,"ttl":"30s","max_stale":"1m"}},
				"top_k":40,"user_id":"u2","metadata":{"a":[1,"}"]}}`,
			want: `{"model":"deepseek-chat","messages":[{"role":"system","content":"Be brief.","name":"ops"},
				{"role":"user","content":"a\nb"},
				{"role":"assistant","reasoningContent":"r","toolCalls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
				{"role":"tool","content":"42","toolCallId":"c1"}],
				"temperature":0.5,"topP":0.9,"maxTokens":10,"maxCompletionTokens":20,"stop":["END"],
				"frequencyPenalty":0.1,"presencePenalty":-0.1,"seed":"7","logprobs":true,"topLogprobs":2,
				"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":"{\"type\":\"object\"}","strict":true}}],
				"toolChoice":{"function":"f"},"parallelToolCalls":false,
				"responseFormat":{"type":"json_schema","jsonSchema":{"name":"s","schema":"{\"type\":\"object\"}","strict":true}},
				"thinking":{"type":"enabled"},"reasoningEffort":"high","user":"u1",
				"routing":{"preferRegion":"eu","noFallback":true},"cache":{"noCache":true,"ttl":"30s","maxStale":"60s"},
				"extraBody":"{\"top_k\":40,\"user_id\":\"u2\",\"metadata\":{\"a\":[1,\"}\"]}}"}`,
			wantExtra: `{"top_k":40,"user_id":"u2","metadata":{"a":[1,"}"]}}`,
		},
		{name: "tool_choice mode", body: `{"model":"m","messages":[],"tool_choice":"required"}`, want: `{"model":"m","toolChoice":{"mode":"required"}}`},
		{name: "not JSON", body: `{"model":`, wantErr: "-"},
		{name: "not an object", body: `"x"`, wantErr: "-"},
		{name: "not UTF-8", body: "{\"model\":\"\xff\"}", wantErr: "-"},
		{name: "wrong type", body: `{"model":1}`, wantErr: "model"},
		{name: "n 3", body: `{"model":"m","n":3}`, wantErr: "n"},
		{name: "image part", body: `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, wantErr: "-"},
		{name: "bad tool_choice", body: `{"model":"m","tool_choice":{"type":"function"}}`, wantErr: "-"},
		{name: "bad ttl", body: `{"model":"m","detour":{"cache":{"ttl":"x"}}}`, wantErr: "detour.cache.ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, extra, err := DecodeRequest([]byte(tt.body))
			var req *detourv1.CompleteRequest
			if err == nil {
				req, err = r.Proto(extra)
			}
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, want one about %s", tt.wantErr)
				}
				msg, param := Describe(err)
				if want := strings.TrimPrefix(tt.wantErr, "-"); param != want || msg == "" {
					t.Fatalf("Describe = %q, %q; want param %q", msg, param, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if extra != tt.wantExtra {
				t.Errorf("extra = %s, want %s", extra, tt.wantExtra)
			}
			want := &detourv1.CompleteRequest{}
			if err := protojson.Unmarshal([]byte(tt.want), want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(req, want, protocmp.Transform()); diff != "" {
				t.Errorf("request (-got +want):\n%s", diff)
			}
		})
	}
}

// TestRoundTrip: a detour.v1 request mapped to JSON (the provider's way)
// and read back (the HTTP face's way) is the same request.
func TestRoundTrip(t *testing.T) {
	in := &detourv1.CompleteRequest{}
	if err := protojson.Unmarshal([]byte(`{"model":"m","messages":[{"role":"user","content":"hi \"there\"\n"},
		{"role":"assistant","toolCalls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]}],
		"temperature":1,"stop":["x","y"],"toolChoice":{"mode":"auto"},"seed":"3",
		"tools":[{"type":"function","function":{"name":"f","parameters":"{\"type\":\"object\"}"}}]}`), in); err != nil {
		t.Fatal(err)
	}
	b, err := Marshal(NewRequest(in))
	if err != nil {
		t.Fatal(err)
	}
	r, extra, err := DecodeRequest(b)
	if err != nil || extra != "" {
		t.Fatalf("DecodeRequest(%s) = extra %q, %v", b, extra, err)
	}
	out, err := r.Proto("")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(out, in, protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-got +want):\n%s", diff)
	}
}

func TestNewResponse(t *testing.T) {
	hit, reasoning := int32(3), int32(5)
	resp := &detourv1.CompleteResponse{Id: "x", Model: "m", FinishReason: "tool_calls",
		ToolCalls: []*detourv1.ToolCall{{Id: "c", Function: &detourv1.FunctionCall{Name: "f", Arguments: "{}"}}},
		Usage:     &detourv1.Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3, PromptCacheHitTokens: &hit, ReasoningTokens: &reasoning},
		ServedBy:  &detourv1.ServedBy{Region: "r", Backend: "b", Kind: detourv1.ProviderKind_PROVIDER_KIND_OPENAI},
		Source:    detourv1.Source_SOURCE_LIVE, Attempts: 1}
	b, err := Marshal(NewResponse(resp, 9))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"x","object":"chat.completion","created":9,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,` +
		`"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],` +
		`"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_cache_hit_tokens":3,"prompt_tokens_details":{"cached_tokens":3},` +
		`"completion_tokens_details":{"reasoning_tokens":5}},"detour":{"served_by":{"region":"r","backend":"b","kind":"openai"},"source":"live","attempts":1}}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	var back Response
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(back.Proto(), &detourv1.CompleteResponse{Id: "x", Model: "m", FinishReason: "tool_calls",
		ToolCalls: []*detourv1.ToolCall{{Id: "c", Type: "function", Function: &detourv1.FunctionCall{Name: "f", Arguments: "{}"}}},
		Usage:     &detourv1.Usage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3, PromptCacheHitTokens: &hit, ReasoningTokens: &reasoning}},
		protocmp.Transform()); diff != "" {
		t.Errorf("read back (-got +want):\n%s", diff)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":1}`))
	f.Add([]byte(`{"a":{"b":[1,{"c":"\"}"}]},"model":"m"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, extra, err := DecodeRequest(b)
		if err != nil {
			Describe(err)
			return
		}
		if extra != "" && !json.Valid([]byte(extra)) {
			t.Fatalf("extra %q from %q is not JSON", extra, b)
		}
		if _, err := r.Proto(extra); err != nil {
			Describe(err)
		}
	})
}
