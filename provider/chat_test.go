package provider

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func TestCheckExtraBody(t *testing.T) {
	tests := []struct {
		name, extra string
		wantErr     string // substring; "" for valid
	}{
		{name: "empty", extra: ""},
		{name: "object", extra: `{"top_k": 40, "safe": {"level": [1, 2]}}`},
		{name: "empty object", extra: ` {} `},
		{name: "array", extra: `[1]`, wantErr: "JSON object"},
		{name: "null", extra: `null`, wantErr: "JSON object"},
		{name: "string", extra: `"x"`, wantErr: "JSON object"},
		{name: "cut", extra: `{"top_k": 4`, wantErr: "not valid JSON"},
		{name: "two objects", extra: `{}{}`, wantErr: "nothing after it"},
		{name: "model", extra: `{"model": "gpt-4o"}`, wantErr: `"model" is detour's own`},
		{name: "stream", extra: `{"stream": false}`, wantErr: `"stream" is detour's own`},
		{name: "n", extra: `{"n": 3}`, wantErr: `"n" is detour's own`},
		{name: "twice", extra: `{"top_k": 1, "top_k": 2}`, wantErr: "appears twice"},
		{name: "too large", extra: `{"x":"` + strings.Repeat("y", MaxExtraBodyBytes) + `"}`, wantErr: "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckExtraBody(tt.extra)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("CheckExtraBody(%q) = %v, want nil", tt.extra, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrExtraBody)):
				t.Errorf("CheckExtraBody(%q) = %v, want an ErrExtraBody saying %q", tt.extra, err, tt.wantErr)
			}
		})
	}
}

// progress records what a provider reports to its Progress, and signals
// each report on ch.
type progress struct {
	mu         sync.Mutex
	keepAlives int
	answering  int
	ch         chan struct{}
}

var _ Progress = (*progress)(nil)

func newProgress() *progress { return &progress{ch: make(chan struct{}, 100)} }

func (p *progress) KeepAlive() {
	p.mu.Lock()
	p.keepAlives++
	p.mu.Unlock()
	p.ch <- struct{}{}
}

func (p *progress) Answering() {
	p.mu.Lock()
	p.answering++
	p.mu.Unlock()
	p.ch <- struct{}{}
}

func (p *progress) counts() (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keepAlives, p.answering
}

// Keep-alives before a unary answer (empty lines) and in a stream (SSE
// comments, empty events) reach the Progress of the call's context.
func TestOpenAIKeepAlives(t *testing.T) {
	answer := `{"id":"c1","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}`
	t.Run("unary", func(t *testing.T) {
		p := newProgress()
		ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-p.ch // the headers
			for range 3 {
				io.WriteString(w, "\n")
				w.(http.Flusher).Flush()
				<-p.ch // that empty line
			}
			io.WriteString(w, answer)
		})
		resp, err := newOpenAI(t, ts.URL, "").Complete(WithProgress(t.Context(), p), userRequest("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetContent() != "hi" {
			t.Errorf("content %q after keep-alives, want hi", resp.GetContent())
		}
		if k, a := p.counts(); k != 4 || a != 1 {
			t.Errorf("%d keep-alives and %d answering, want 4 (headers and 3 lines) and 1", k, a)
		}
	})
	t.Run("stream", func(t *testing.T) {
		p := newProgress()
		ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			for range 3 {
				io.WriteString(w, ": keep-alive\n\n")
				w.(http.Flusher).Flush()
			}
			sse(w, `{"id":"s","choices":[{"delta":{"role":"assistant","content":""}}]}`,
				`{"id":"s","choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}`, "[DONE]")
		})
		st, err := newOpenAI(t, ts.URL, "").Stream(WithProgress(t.Context(), p), userRequest("hi"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		c, err := st.Recv()
		if err != nil || c.GetDelta() != "hi" {
			t.Fatalf("Recv = %v, %v; want the content chunk", c, err)
		}
		// The headers, each comment and the empty line after it, the
		// role-only event.
		if k, _ := p.counts(); k != 1+3*2+1 {
			t.Errorf("%d keep-alives, want 8", k)
		}
	})
}

// A JSON-mode answer with blank content fails with ErrBlankJSON (Failed:
// retried elsewhere, never cached); the whitespace a JSON stream starts with
// is held until content follows.
func TestOpenAIBlankJSON(t *testing.T) {
	jsonReq := func() *detourv1.CompleteRequest {
		r := userRequest("json please")
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_object"}
		return r
	}
	unary := func(content string, toolCalls string) string {
		return `{"id":"c1","choices":[{"message":{"content":` + content + toolCalls + `},"finish_reason":"stop"}]}`
	}
	tests := []struct {
		name    string
		req     *detourv1.CompleteRequest
		body    string
		wantErr bool
	}{
		{name: "blank", req: jsonReq(), body: unary(`"\n\n  "`, ""), wantErr: true},
		{name: "empty", req: jsonReq(), body: unary(`""`, ""), wantErr: true},
		{name: "null", req: jsonReq(), body: unary(`null`, ""), wantErr: true},
		{name: "object", req: jsonReq(), body: unary(`"{\"a\":1}"`, "")},
		{name: "blank with a tool call", req: jsonReq(), body: unary(`""`, `,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]`)},
		{name: "blank text", req: userRequest("x"), body: unary(`"  "`, "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tt.body) })
			_, err := newOpenAI(t, ts.URL, "").Complete(t.Context(), tt.req)
			if !tt.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			errCheck{class: breaker.Failed, is: ErrBlankJSON, contains: "blank content in JSON mode"}.check(t, err)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%v does not wrap ErrMalformed", err)
			}
		})
	}

	stream := func(t *testing.T, events ...string) ([]*detourv1.CompleteChunk, error) {
		ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) { sse(w, append(events, "[DONE]")...) })
		st, err := newOpenAI(t, ts.URL, "").Stream(t.Context(), jsonReq())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		var got []*detourv1.CompleteChunk
		for {
			c, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return got, nil
			}
			if err != nil {
				return got, err
			}
			got = append(got, c)
		}
	}
	delta := func(s, finish string) string {
		f := "null"
		if finish != "" {
			f = `"` + finish + `"`
		}
		b, _ := json.Marshal(s)
		return `{"id":"s","choices":[{"delta":{"content":` + string(b) + `},"finish_reason":` + f + `}]}`
	}
	t.Run("stream held whitespace", func(t *testing.T) {
		got, err := stream(t, delta("\n", ""), delta("  ", ""), delta(`{"a":`, ""), delta(`1}`, "stop"))
		if err != nil {
			t.Fatal(err)
		}
		var deltas []string
		for _, c := range got {
			deltas = append(deltas, c.GetDelta())
		}
		if diff := cmp.Diff(deltas, []string{"\n  {\"a\":", "1}"}); diff != "" {
			t.Errorf("deltas (-got +want):\n%s", diff)
		}
	})
	t.Run("stream blank", func(t *testing.T) {
		got, err := stream(t, delta("\n", ""), delta("  ", ""), delta("", "stop"))
		if len(got) != 0 {
			t.Errorf("got chunks %v before the error, want none", got)
		}
		errCheck{class: breaker.Failed, is: ErrBlankJSON, contains: "blank content"}.check(t, err)
	})
	t.Run("stream blank without finish", func(t *testing.T) {
		_, err := stream(t, delta("\n", ""))
		errCheck{class: breaker.Failed, is: ErrIncomplete, contains: "without a finish reason"}.check(t, err)
	})
}

// fullRequest sets every field of a request.
func fullRequest() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model: "deepseek-chat",
		Messages: []*detourv1.Message{
			{Role: "user", Content: "weather?", Name: "ann"},
			{Role: "assistant", ReasoningContent: "tool time", ToolCalls: []*detourv1.ToolCall{{Id: "call_1", Type: "function",
				Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: `{"city":"Paris"}`}}}},
			{Role: "tool", ToolCallId: "call_1", Content: "sunny"},
		},
		Temperature: proto.Float64(0.3), TopP: proto.Float64(0.8), MaxTokens: 100, Stop: []string{"END"}, User: "u1",
		Tools: []*detourv1.Tool{{Type: "function", Function: &detourv1.FunctionDefinition{Name: "get_weather", Description: "d",
			Parameters: `{"type":"object"}`, Strict: proto.Bool(true)}}},
		ToolChoice:        &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Function{Function: "get_weather"}},
		ParallelToolCalls: proto.Bool(false),
		ResponseFormat:    &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: &detourv1.JsonSchema{Name: "s", Schema: `{"type":"object"}`, Strict: proto.Bool(true)}},
		Thinking:          &detourv1.Thinking{Type: "enabled"}, ReasoningEffort: "high",
		FrequencyPenalty: proto.Float64(0.1), PresencePenalty: proto.Float64(-0.1), Seed: proto.Int64(9),
		Logprobs: true, TopLogprobs: proto.Int32(3), MaxCompletionTokens: 200, ExtraBody: `{"top_k":5}`,
		Routing: &detourv1.RoutingHints{PreferRegion: "eu"}, Cache: &detourv1.CacheHints{NoCache: true},
	}
}

// A detour backend gets every field as sent and answers every field back,
// unary and streamed; with send_tenant_as, the tenant goes as the user.
func TestDetourPassesEverything(t *testing.T) {
	full := &detourv1.CompleteResponse{
		Id: "c1", Model: "deepseek-chat", Content: `{"ok":true}`, ReasoningContent: "thought", FinishReason: "stop",
		ToolCalls: []*detourv1.ToolCall{{Id: "call_2", Type: "function", Function: &detourv1.FunctionCall{Name: "f", Arguments: "{}"}}},
		Logprobs:  &detourv1.Logprobs{Content: []*detourv1.TokenLogprob{{Token: "{", Logprob: -0.1, Bytes: []byte("{"), TopLogprobs: []*detourv1.TopLogprob{{Token: "[", Logprob: -2}}}}},
		Usage: &detourv1.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15, PromptCacheHitTokens: proto.Int32(8),
			PromptCacheMissTokens: proto.Int32(2), ReasoningTokens: proto.Int32(3)},
		ServedBy: &detourv1.ServedBy{Region: "eu", Backend: "ds-1"}, Source: detourv1.Source_SOURCE_LIVE, Attempts: 1,
	}
	chunks := []*detourv1.CompleteChunk{
		{Id: "c1", ReasoningDelta: "thought"},
		{Id: "c1", Delta: `{"ok":true}`, Logprobs: full.Logprobs},
		{Id: "c1", ToolCallDeltas: []*detourv1.ToolCallDelta{{Index: 0, Id: "call_2", Type: "function", Function: &detourv1.FunctionCall{Name: "f"}}}},
		{Id: "c1", ToolCallDeltas: []*detourv1.ToolCallDelta{{Index: 0, Function: &detourv1.FunctionCall{Arguments: "{}"}}}, FinishReason: "tool_calls", Usage: full.Usage},
	}
	for _, tenantAs := range []string{"", regions.TenantAsUserID} {
		t.Run("send_tenant_as="+tenantAs, func(t *testing.T) {
			var mu sync.Mutex
			var got []*detourv1.CompleteRequest
			record := func(r *detourv1.CompleteRequest) {
				mu.Lock()
				got = append(got, r)
				mu.Unlock()
			}
			addr := newGRPCServer(t, &fakeRouter{
				complete: func(_ context.Context, r *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
					record(r)
					return full, nil
				},
				stream: func(r *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
					record(r)
					for _, c := range chunks {
						if err := st.Send(c); err != nil {
							return err
						}
					}
					return nil
				},
			})
			b := backendFor(t, "detour", addr, "")
			b.SendTenantAs = tenantAs
			d, err := NewDetour(b)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx := auth.WithTenant(t.Context(), "team-a")
			req := fullRequest()
			resp, err := d.Complete(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(resp, full, protocmp.Transform()); diff != "" {
				t.Errorf("answer (-got +want):\n%s", diff)
			}
			st, err := d.Stream(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var gotChunks []*detourv1.CompleteChunk
			for {
				c, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				gotChunks = append(gotChunks, c)
			}
			if diff := cmp.Diff(gotChunks, chunks, protocmp.Transform()); diff != "" {
				t.Errorf("chunks (-got +want):\n%s", diff)
			}
			want := fullRequest()
			if tenantAs != "" {
				want.User = "team-a"
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff(got, []*detourv1.CompleteRequest{want, want}, protocmp.Transform()); diff != "" {
				t.Errorf("requests sent (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(req, fullRequest(), protocmp.Transform()); diff != "" {
				t.Errorf("the caller's request changed (-got +want):\n%s", diff)
			}
		})
	}
}

// A detour backend's blank JSON-mode answer fails like an HTTP one.
func TestDetourBlankJSON(t *testing.T) {
	addr := newGRPCServer(t, &fakeRouter{
		complete: func(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
			return &detourv1.CompleteResponse{Content: "\n ", FinishReason: "stop"}, nil
		},
		stream: func(_ *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
			st.Send(&detourv1.CompleteChunk{Delta: "\n"})
			return st.Send(&detourv1.CompleteChunk{Delta: " ", FinishReason: "stop"})
		},
	})
	d := newDetour(t, addr, "")
	req := userRequest("json")
	req.ResponseFormat = &detourv1.ResponseFormat{Type: "json_object"}
	_, err := d.Complete(t.Context(), req)
	errCheck{class: breaker.Failed, is: ErrBlankJSON, contains: "blank content"}.check(t, err)
	st, err := d.Stream(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := st.Recv()
	if c != nil {
		t.Errorf("got chunk %v, want the blank answer held back", c)
	}
	errCheck{class: breaker.Failed, is: ErrBlankJSON, contains: "blank content"}.check(t, err)
}

// FuzzDecodeAnswer checks that any unary answer body decodes without a
// panic, into an answer or a reason, and that what it decodes survives a
// round trip through the wire.
//
//	go test ./provider -run='^$' -fuzz=FuzzDecodeAnswer -fuzztime=60s
func FuzzDecodeAnswer(f *testing.F) {
	for _, s := range []string{
		`{"id":"c1","model":"m","choices":[{"message":{"content":"hi","reasoning_content":"r","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"logprobs":{"content":[{"token":"h","logprob":-1,"bytes":[104],"top_logprobs":[{"token":"h","logprob":-1,"bytes":[104]}]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_cache_hit_tokens":1,"prompt_cache_miss_tokens":0,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":1}}}`,
		`{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"arguments":{"city":"Paris"}}}]}}]}`,
		`{"choices":[{"logprobs":{"content":[{"bytes":[300,-1]}]}}]}`,
		`{"error":{"message":"busy"}}`,
		`{"usage":{"prompt_tokens":99999999999}}`,
		"\n\n{}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		resp, problem := decodeAnswer(body)
		if (resp == nil) == (problem == "") {
			t.Fatalf("decodeAnswer = %v, %q: want an answer or a reason", resp, problem)
		}
		if resp == nil {
			return
		}
		b, err := proto.Marshal(resp) // encoding/json made every string valid UTF-8
		if err != nil {
			t.Fatalf("Marshal(%v): %v", resp, err)
		}
		back := &detourv1.CompleteResponse{}
		if err := proto.Unmarshal(b, back); err != nil || !proto.Equal(back, resp) {
			t.Fatalf("round trip changed %v to %v (%v)", resp, back, err)
		}
	})
}

// FuzzDecodeChunk checks that any stream event decodes without a panic, and
// that a JSON-mode guard over the chunks never loses content.
//
//	go test ./provider -run='^$' -fuzz=FuzzDecodeChunk -fuzztime=60s
func FuzzDecodeChunk(f *testing.F) {
	for _, s := range []string{
		`{"id":"s","choices":[{"delta":{"content":"hi","reasoning_content":null},"finish_reason":null}]}`,
		`{"id":"s","choices":[{"delta":{"content":null,"reasoning_content":"thinking"}}]}`,
		`{"id":"s","choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}`,
		`{"id":"s","choices":[{"delta":{"tool_calls":[{"index":2147483647,"function":{"arguments":"{\""}}]}}]}`,
		`{"id":"s","choices":[{"delta":{"content":" "},"logprobs":{"content":[{"token":" ","logprob":-0.5,"bytes":[32]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1}}`,
		`{"choices":[],"usage":{"completion_tokens_details":{"reasoning_tokens":5}}}`,
		`{"error":{"message":"overloaded"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, upstreamErr, err := decodeChunk(data)
		if err != nil || upstreamErr {
			if ch != nil {
				t.Fatalf("decodeChunk returned a chunk with an error")
			}
			return
		}
		delta := ch.GetDelta()
		g := blankGuard{on: true}
		gerr := g.check(ch)
		if gerr == nil && g.started && ch.GetDelta() != delta {
			t.Fatalf("guard changed started content %q to %q", delta, ch.GetDelta())
		}
		if gerr == nil && !g.started && g.held != delta {
			t.Fatalf("guard held %q of %q", g.held, delta)
		}
		if gerr != nil && (strings.TrimSpace(delta) != "" || len(ch.GetToolCallDeltas()) > 0) {
			t.Fatalf("guard refused content %q: %v", delta, gerr)
		}
	})
}

// FuzzExtraBody checks that an extra_body CheckExtraBody accepts always
// makes a request body that is one valid JSON object, with detour's own
// members first and unchanged.
//
//	go test ./provider -run='^$' -fuzz=FuzzExtraBody -fuzztime=60s
func FuzzExtraBody(f *testing.F) {
	for _, s := range []string{`{"top_k":40}`, `{"temperature":2,"x":{"y":[1,"2",null]}}`, `{}`, `{"model":"x"}`, `[]`, `{"a":1}{`, `{"\u006dodel":1}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, extra string) {
		req := fullRequest()
		req.ExtraBody = extra
		body, err := encodeChatRequest(req, true, "", "")
		if CheckExtraBody(extra) != nil {
			if err == nil && extra != "" {
				t.Fatalf("CheckExtraBody refused %q but encodeChatRequest took it", extra)
			}
			return
		}
		if err != nil {
			t.Fatalf("encodeChatRequest(%q): %v", extra, err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("body %s is not a JSON object: %v", body, err)
		}
		for _, k := range []string{"model", "messages", "stream", "stream_options", "temperature"} {
			if _, ok := got[k]; !ok {
				t.Fatalf("body %s lost %q", body, k)
			}
		}
		if string(got["model"]) != `"deepseek-chat"` || string(got["stream"]) != "true" || string(got["temperature"]) != "0.3" {
			t.Fatalf("extra_body %q changed detour's own members: %s", extra, body)
		}
	})
}
