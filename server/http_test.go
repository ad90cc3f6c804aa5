package server

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/internal/testpki"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// httpFixture is detour's HTTP and gRPC faces in front of one fakellm,
// every piece real and on loopback.
type httpFixture struct {
	fake *fakellm.Server
	srv  *Server
	base string // the HTTP face's base URL, ".../v1"
	grpc string // the gRPC listener's address
}

const testToken = "sk-test-team-a"

// httpConfig is the fixture's config; extra is appended YAML.
func httpConfig(endpoint, extra string) string {
	return fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake
        endpoint: %s
        models: [deepseek-chat, deepseek-reasoner]
retry:
  max_attempts: 2
  backoff_base: 1ms
  backoff_max: 2ms
cache:
  disabled: true
%s`, endpoint, extra)
}

func startHTTPFixture(t *testing.T, extraYAML string, authMode auth.Mode, hopts HTTPOptions) *httpFixture {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	fx := &httpFixture{fake: fakellm.New(fakellm.Config{Name: "fake", Region: "local"})}
	if err := fx.fake.Start("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.fake.Close() })
	cfg, err := regions.Load([]byte(httpConfig("http://"+fx.fake.HTTPAddr()+"/v1", extraYAML)))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Logger: quiet, AuthenticatedTenants: authMode != auth.ModeOff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	authn, err := auth.New(auth.Options{Mode: authMode, Config: func() *regions.Config { return rt.Snapshot().Config }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	fx.srv = New(rt, Options{Logger: quiet, GRPCOptions: []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(authn.UnaryInterceptor()), grpc.ChainStreamInterceptor(authn.StreamInterceptor())}})
	hopts.Auth = authn
	hs := fx.srv.NewHTTP(hopts)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http://"
	if hopts.TLS != nil {
		scheme = "https://"
	}
	fx.base, fx.grpc = scheme+hl.Addr().String()+"/v1", gl.Addr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); hs.Serve(hl) }()
	go func() { defer wg.Done(); fx.srv.Serve(gl) }()
	t.Cleanup(func() {
		hs.Shutdown(context.Background())
		fx.srv.Shutdown(context.Background())
		wg.Wait()
	})
	return fx
}

// client is an OpenAI SDK client of the fixture's HTTP face. Each attempt
// the SDK makes (its own retries included) is recorded in attempts.
func (fx *httpFixture) client(attempts *attemptLog, opts ...option.RequestOption) openai.Client {
	base := []option.RequestOption{option.WithBaseURL(fx.base), option.WithAPIKey(testToken), option.WithMaxRetries(0)}
	if attempts != nil {
		base = append(base, option.WithMiddleware(attempts.middleware))
	}
	return openai.NewClient(append(base, opts...)...)
}

// attemptLog records the HTTP answers the SDK got, one per attempt.
type attemptLog struct {
	mu  sync.Mutex
	got []attempt
}

type attempt struct {
	status              int
	retryAfter, retryMS string
	servedBy, source    string
	at                  time.Time
}

func (l *attemptLog) middleware(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	resp, err := next(req)
	if err == nil {
		l.mu.Lock()
		l.got = append(l.got, attempt{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"),
			retryMS: resp.Header.Get("Retry-After-Ms"), servedBy: resp.Header.Get(HeaderServedBy),
			source: resp.Header.Get(HeaderSource), at: time.Now()})
		l.mu.Unlock()
	}
	return resp, err
}

func (l *attemptLog) all() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]attempt(nil), l.got...)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHTTPUnaryWithTheOpenAISDK(t *testing.T) {
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
	var log attemptLog
	c := fx.client(&log)
	resp, err := c.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{
		Model:    "deepseek-chat",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("hello there")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 1 || !strings.Contains(resp.Choices[0].Message.Content, "hello there") || resp.Choices[0].FinishReason != "stop" {
		t.Fatalf("answer = %+v, want one choice echoing the prompt, finish stop", resp.Choices)
	}
	if resp.Usage.PromptTokens == 0 || resp.Usage.TotalTokens != resp.Usage.PromptTokens+resp.Usage.CompletionTokens {
		t.Errorf("usage = %+v", resp.Usage)
	}
	if resp.Object != "chat.completion" || resp.Model != "deepseek-chat" || resp.ID == "" {
		t.Errorf("object, model, id = %q, %q, %q", resp.Object, resp.Model, resp.ID)
	}
	var ext struct {
		ServedBy struct{ Region, Backend, Kind string } `json:"served_by"`
		Source   string
		Attempts int
	}
	if err := json.Unmarshal([]byte(resp.JSON.ExtraFields["detour"].Raw()), &ext); err != nil {
		t.Fatalf("extension member: %v in %q", err, resp.RawJSON())
	}
	if ext.ServedBy.Backend != "fake" || ext.ServedBy.Region != "local" || ext.ServedBy.Kind != "openai" || ext.Source != "live" || ext.Attempts != 1 {
		t.Errorf("detour member = %+v", ext)
	}
	a := log.all()
	if len(a) != 1 || a[0].status != 200 || a[0].servedBy != "local/fake" || a[0].source != "live" {
		t.Errorf("attempts = %+v, want one 200 served by local/fake, live", a)
	}
}

func TestHTTPStreamWithTheOpenAISDK(t *testing.T) {
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
	c := fx.client(nil)
	for _, usage := range []bool{true, false} {
		t.Run(fmt.Sprintf("include_usage=%v", usage), func(t *testing.T) {
			params := openai.ChatCompletionNewParams{
				Model:    "deepseek-reasoner",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("tell me a story")},
			}
			if usage {
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			st := c.Chat.Completions.NewStreaming(testCtx(t), params)
			var acc openai.ChatCompletionAccumulator
			chunks, reasoning := 0, 0
			for st.Next() {
				ch := st.Current()
				acc.AddChunk(ch)
				chunks++
				if len(ch.Choices) > 0 && ch.Choices[0].Delta.JSON.ExtraFields["reasoning_content"].Raw() != "" {
					reasoning++
				}
			}
			if err := st.Err(); err != nil {
				t.Fatal(err)
			}
			if len(acc.Choices) != 1 || !strings.Contains(acc.Choices[0].Message.Content, "tell me a story") || acc.Choices[0].FinishReason != "stop" {
				t.Fatalf("accumulated = %+v", acc.Choices)
			}
			if reasoning == 0 {
				t.Errorf("no chunk carried reasoning_content (deepseek-reasoner thinks)")
			}
			if got := acc.Usage.TotalTokens > 0; got != usage {
				t.Errorf("usage = %+v, want it only with include_usage", acc.Usage)
			}
			if usage && acc.Usage.CompletionTokensDetails.ReasoningTokens == 0 {
				t.Errorf("usage lacks reasoning tokens: %+v", acc.Usage)
			}
		})
	}
}

func weatherTool() openai.ChatCompletionToolUnionParam {
	return openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
		Name:        "get_weather",
		Description: openai.String("Weather at a place"),
		Parameters: shared.FunctionParameters{
			"type":       "object",
			"properties": map[string]any{"location": map[string]string{"type": "string"}},
			"required":   []string{"location"},
		},
	})
}

func TestHTTPToolCallsWithTheOpenAISDK(t *testing.T) {
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
	c := fx.client(nil)
	ctx := testCtx(t)
	params := openai.ChatCompletionNewParams{
		Model:    "deepseek-chat",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("What is the weather in Paris")},
		Tools:    []openai.ChatCompletionToolUnionParam{weatherTool()},
		ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{
			OfFunctionToolChoice: &openai.ChatCompletionNamedToolChoiceParam{Function: openai.ChatCompletionNamedToolChoiceFunctionParam{Name: "get_weather"}}},
	}
	resp, err := c.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	msg := resp.Choices[0].Message
	if resp.Choices[0].FinishReason != "tool_calls" || len(msg.ToolCalls) != 1 {
		t.Fatalf("answer = %+v, want one tool call", resp.Choices[0])
	}
	call := msg.ToolCalls[0]
	if call.Function.Name != "get_weather" || !strings.Contains(call.Function.Arguments, "Paris") || call.ID == "" {
		t.Fatalf("tool call = %+v", call)
	}

	// The same call streamed, accumulated by the SDK.
	st := c.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	for st.Next() {
		acc.AddChunk(st.Current())
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.ToolCalls; len(got) != 1 || got[0].Function.Name != "get_weather" || got[0].Function.Arguments != call.Function.Arguments {
		t.Fatalf("streamed tool calls = %+v, want %+v", got, call)
	}

	// The result goes back in a tool turn.
	params.Messages = append(params.Messages, msg.ToParam(), openai.ToolMessage("18C, rain", call.ID))
	params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
	resp, err = c.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Choices[0].Message.Content == "" || len(resp.Choices[0].Message.ToolCalls) != 0 {
		t.Fatalf("answer to the tool result = %+v", resp.Choices[0])
	}
}

func TestHTTPJSONModeWithTheOpenAISDK(t *testing.T) {
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
	c := fx.client(nil)
	resp, err := c.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{
		Model:          "deepseek-chat",
		Messages:       []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Give me a city as JSON")},
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(resp.Choices[0].Message.Content), &v); err != nil {
		t.Fatalf("content %q is not a JSON object: %v", resp.Choices[0].Message.Content, err)
	}
}

// TestHTTPRetryAfterDrivesTheSDK: detour's 429 and 503 carry Retry-After
// and retry-after-ms, and the SDK's own retry loop waits that long and
// tries again, as it does with the provider's.
func TestHTTPRetryAfterDrivesTheSDK(t *testing.T) {
	t.Run("429 over quota, then served", func(t *testing.T) {
		fx := startHTTPFixture(t, "tenants:\n  - name: default\n    qps: 4\n    burst: 1\n", auth.ModeOff, HTTPOptions{})
		var log attemptLog
		c := fx.client(&log, option.WithMaxRetries(2))
		ctx := testCtx(t)
		req := openai.ChatCompletionNewParams{Model: "deepseek-chat", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
		if _, err := c.Chat.Completions.New(ctx, req); err != nil { // the bucket's one token
			t.Fatal(err)
		}
		if _, err := c.Chat.Completions.New(ctx, req); err != nil {
			t.Fatalf("the SDK did not get through after its retries: %v", err)
		}
		a := log.all()
		if len(a) < 3 || a[1].status != http.StatusTooManyRequests || a[len(a)-1].status != http.StatusOK {
			t.Fatalf("attempts = %+v, want 200, then 429, then (after retries) 200", a)
		}
		if a[1].retryAfter != "1" || a[1].retryMS == "" {
			t.Errorf("429 Retry-After %q, retry-after-ms %q: want 1 and the quota's wait", a[1].retryAfter, a[1].retryMS)
		}
		var ms time.Duration
		fmt.Sscan(a[1].retryMS, &ms)
		if waited := a[2].at.Sub(a[1].at); waited < ms*time.Millisecond*9/10 {
			t.Errorf("the SDK retried after %v, before the retry-after-ms of %v ms", waited, ms)
		}
	})
	t.Run("503 every backend busy", func(t *testing.T) {
		fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{})
		st := fx.fake.Settings()
		st.BusyRate = 1
		if err := fx.fake.SetSettings(st); err != nil {
			t.Fatal(err)
		}
		var log attemptLog
		c := fx.client(&log, option.WithMaxRetries(2))
		_, err := c.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{Model: "deepseek-chat",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || apiErr.Type != "server_error" || apiErr.Code != "unavailable" {
			t.Fatalf("err = %v, want a 503 server_error, code unavailable", err)
		}
		a := log.all()
		t.Logf("attempts: %+v", a)
		if len(a) != 3 {
			t.Fatalf("the SDK made %d attempts, want 3 (it retries a 503 twice)", len(a))
		}
		for _, x := range a {
			if x.status != 503 || x.retryAfter == "" || x.retryMS == "" {
				t.Errorf("attempt %+v: want 503 with Retry-After and retry-after-ms", x)
			}
		}
	})
}

func TestHTTPAuth(t *testing.T) {
	sum := sha256.Sum256([]byte(testToken))
	fx := startHTTPFixture(t, fmt.Sprintf(`tenants:
  - name: team-a
    token_sha256: [%s]
    models: [deepseek-chat]
`, hex.EncodeToString(sum[:])), auth.ModeToken, HTTPOptions{})
	ctx := testCtx(t)
	req := openai.ChatCompletionNewParams{Model: "deepseek-chat", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
	c := fx.client(nil)
	if _, err := c.Chat.Completions.New(ctx, req); err != nil {
		t.Fatalf("with the tenant's token: %v", err)
	}
	models, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != "deepseek-chat" {
		t.Errorf("models = %+v, want deepseek-chat only (the tenant's allow-list)", models.Data)
	}
	for _, tt := range []struct {
		name   string
		key    string
		model  string
		status int
	}{
		{"bad token", "sk-wrong", "deepseek-chat", http.StatusUnauthorized},
		{"model not allowed", testToken, "deepseek-reasoner", http.StatusForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var log attemptLog
			req := req
			req.Model = tt.model
			c := fx.client(&log, option.WithAPIKey(tt.key), option.WithMaxRetries(2))
			_, err := c.Chat.Completions.New(ctx, req)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != tt.status {
				t.Fatalf("err = %v, want HTTP %d", err, tt.status)
			}
			if n := len(log.all()); n != 1 {
				t.Errorf("the SDK made %d attempts, want 1: a %d is not retried", n, tt.status)
			}
		})
	}
	// No Authorization header at all.
	resp := post(t, fx.base+"/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`, nil)
	if resp.status != http.StatusUnauthorized || resp.err.Type != "authentication_error" || resp.err.Code != "unauthenticated" {
		t.Errorf("no credentials: %+v", resp)
	}
}

// httpAnswer is a raw answer of the HTTP face.
type httpAnswer struct {
	status int
	header http.Header
	body   string
	err    struct {
		Message, Type string
		Param, Code   string
	}
}

func post(t *testing.T, url, body string, header map[string]string) httpAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := httpAnswer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	var e struct {
		Error struct {
			Message, Type string
			Param, Code   *string
		}
	}
	if json.Unmarshal(b, &e) == nil {
		a.err.Message, a.err.Type = e.Error.Message, e.Error.Type
		if e.Error.Param != nil {
			a.err.Param = *e.Error.Param
		}
		if e.Error.Code != nil {
			a.err.Code = *e.Error.Code
		}
	}
	return a
}

func TestHTTPBadRequests(t *testing.T) {
	fx := startHTTPFixture(t, "limits:\n  max_request_bytes: 4096\n", auth.ModeOff, HTTPOptions{})
	tests := []struct {
		name, path, body string
		status           int
		param, code      string
	}{
		{"not JSON", "/chat/completions", `{"model":`, 400, "", "invalid_argument"},
		{"not an object", "/chat/completions", `[1]`, 400, "", "invalid_argument"},
		{"wrong type", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}],"temperature":"hot"}`, 400, "temperature", "invalid_argument"},
		{"out of range", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}],"temperature":7}`, 400, "temperature", "invalid_argument"},
		{"no messages", "/chat/completions", `{"model":"deepseek-chat","messages":[]}`, 400, "messages", "invalid_argument"},
		{"n of 2", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}],"n":2}`, 400, "n", "invalid_argument"},
		{"an image part", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, "", "invalid_argument"},
		{"bad cache duration", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}],"detour":{"cache":{"ttl":"soon"}}}`, 400, "detour.cache.ttl", "invalid_argument"},
		{"extra member detour owns", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"x"}],"Stream_Options":{}}`, 200, "", ""},
		{"unknown model", "/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, 404, "", "not_found"},
		{"too large", "/chat/completions", `{"model":"deepseek-chat","messages":[{"role":"user","content":"` + strings.Repeat("x", 5000) + `"}]}`, 413, "", "request_too_large"},
		{"unknown path", "/completions", `{}`, 404, "", "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := post(t, fx.base+tt.path, tt.body, nil)
			if a.status != tt.status || a.err.Param != tt.param || a.err.Code != tt.code {
				t.Fatalf("got %d param %q code %q (%s), want %d param %q code %q", a.status, a.err.Param, a.err.Code, a.body, tt.status, tt.param, tt.code)
			}
			if tt.status != 200 && (a.err.Message == "" || a.err.Type == "") {
				t.Errorf("error JSON without message or type: %s", a.body)
			}
		})
	}
}

// TestHTTPExtraMembersGoUpstream: members detour has no field for reach
// the provider as written (extra_body), the extension member does not.
func TestHTTPExtraMembersGoUpstream(t *testing.T) {
	var mu sync.Mutex
	var got map[string]json.RawMessage
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		json.Unmarshal(b, &got)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(lis)
	defer up.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, err := regions.Load([]byte(httpConfig("http://"+lis.Addr().String()+"/v1", "")))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	srv := New(rt, Options{Logger: quiet})
	defer srv.GRPC().Stop() // its stream workers
	hs := srv.NewHTTP(HTTPOptions{})
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); hs.Serve(hl) }()
	defer func() { hs.Shutdown(context.Background()); <-done }()
	c := openai.NewClient(option.WithBaseURL("http://"+hl.Addr().String()+"/v1"), option.WithAPIKey("x"), option.WithMaxRetries(0),
		option.WithJSONSet("top_k", 40), option.WithJSONSet("detour", map[string]any{"routing": map[string]any{"no_fallback": true}}))
	if _, err := c.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{Model: "deepseek-chat",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, Seed: openai.Int(7)}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if string(got["top_k"]) != "40" || string(got["seed"]) != "7" {
		t.Errorf("upstream got top_k %s, seed %s; want 40 and 7", got["top_k"], got["seed"])
	}
	if _, ok := got["detour"]; ok {
		t.Errorf("the detour member went upstream")
	}
}

// TestHTTPSharesMaxInflight: one in-flight count for both faces: a call
// held on either face makes the other refuse the next with its own
// "retry later" (gRPC RESOURCE_EXHAUSTED + RetryInfo, HTTP 429 + Retry-After).
func TestHTTPSharesMaxInflight(t *testing.T) {
	fx := startHTTPFixture(t, "limits:\n  max_inflight: 1\n", auth.ModeOff, HTTPOptions{})
	st := fx.fake.Settings()
	st.Latency = time.Minute // holds the call until it is canceled
	if err := fx.fake.SetSettings(st); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	conn, err := grpc.NewClient(fx.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	grpcCall := func(ctx context.Context) error {
		_, err := detourv1.NewRouterClient(conn).Complete(ctx, &detourv1.CompleteRequest{Model: "deepseek-chat",
			Messages: []*detourv1.Message{{Role: "user", Content: "hi"}}})
		return err
	}
	body := `{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`

	// Held on the HTTP face: the gRPC face refuses.
	hold, release := context.WithCancel(ctx)
	held := make(chan struct{})
	go func() {
		defer close(held)
		req, _ := http.NewRequestWithContext(hold, http.MethodPost, fx.base+"/chat/completions", strings.NewReader(body))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	testkit.Until(t, 10*time.Second, "the HTTP call is in flight", func() bool { return fx.srv.admit.inflight.Load() == 1 })
	if err := grpcCall(ctx); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("gRPC call beside a held HTTP call: %v, want RESOURCE_EXHAUSTED", err)
	}
	if a := post(t, fx.base+"/chat/completions", body, nil); a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Errorf("HTTP call beside a held HTTP call: %d %v", a.status, a.header)
	}
	release()
	<-held
	testkit.Until(t, 10*time.Second, "the held call ended", func() bool { return fx.srv.admit.inflight.Load() == 0 })

	// Held on the gRPC face: the HTTP face refuses.
	hold, release = context.WithCancel(ctx)
	grpcHeld := make(chan error, 1)
	go func() { grpcHeld <- grpcCall(hold) }()
	testkit.Until(t, 10*time.Second, "the gRPC call is in flight", func() bool { return fx.srv.admit.inflight.Load() == 1 })
	a := post(t, fx.base+"/chat/completions", body, nil)
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || a.err.Code != "resource_exhausted" {
		t.Errorf("HTTP call beside a held gRPC call: %d %v %s", a.status, a.header, a.body)
	}
	release()
	<-grpcHeld
}

// TestHTTPSlowClientsCannotHoldTheListener: clients that send their headers
// (or body) a byte at a time lose their connection at the read timeouts,
// and meanwhile every other client is served.
func TestHTTPSlowClientsCannotHoldTheListener(t *testing.T) {
	fx := startHTTPFixture(t, "", auth.ModeOff, HTTPOptions{ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 600 * time.Millisecond})
	addr := strings.TrimSuffix(strings.TrimPrefix(fx.base, "http://"), "/v1")
	const slow = 50
	conns := make([]net.Conn, 0, slow)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range slow {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		part := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" // headers never end
		if i%2 == 1 {
			// Headers whole, a body that never comes.
			part = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":"
		}
		if _, err := io.WriteString(c, part); err != nil {
			t.Fatal(err)
		}
	}
	// Served while they hang.
	c := fx.client(nil)
	if _, err := c.Chat.Completions.New(testCtx(t), openai.ChatCompletionNewParams{Model: "deepseek-chat",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}); err != nil {
		t.Fatalf("a normal client beside %d slow ones: %v", slow, err)
	}
	// Each slow connection is closed by the server (the reads end), well
	// before the test's own deadline.
	deadline := time.Now().Add(10 * time.Second)
	for i, c := range conns {
		c.SetReadDeadline(deadline)
		_, err := io.Copy(io.Discard, bufio.NewReader(c))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("slow connection %d still open after 10 s", i)
		}
	}
}

// TestHTTPMutualTLS: the HTTP face takes the gRPC listener's certificates
// (auth.ServerTLS) and identifies a caller by its client certificate, over
// HTTP/2 and HTTP/1.1.
func TestHTTPMutualTLS(t *testing.T) {
	pki := testpki.New(t)
	pki.Issue(t, "server", "detour", "", true)
	clientCert := pki.Issue(t, "client", "search", "", false)
	certs, err := auth.NewServerTLS(auth.ServerTLSOptions{CertFile: pki.Path("server.crt"), KeyFile: pki.Path("server.key"),
		ClientCAFile: pki.Path("ca.crt"), OptionalClientCert: true, PollInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer certs.Close()
	fx := startHTTPFixture(t, "tenants:\n  - name: search\n    identities: [\"CN=search\"]\n    models: [deepseek-chat]\n",
		auth.ModeAny, HTTPOptions{TLS: certs.Config()})
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{clientCert}}, ForceAttemptHTTP2: h2}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			var resp *http.Response
			c := openai.NewClient(option.WithBaseURL(fx.base), option.WithAPIKey(""), option.WithMaxRetries(0),
				option.WithHTTPClient(&http.Client{Transport: tr}), option.WithResponseInto(&resp),
				option.WithHeaderDel("Authorization"))
			ctx := testCtx(t)
			req := openai.ChatCompletionNewParams{Model: "deepseek-chat", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}}
			if _, err := c.Chat.Completions.New(ctx, req); err != nil {
				t.Fatalf("with the client certificate: %v", err)
			}
			if want := map[bool]int{true: 2, false: 1}[h2]; resp.ProtoMajor != want {
				t.Errorf("protocol %s, want HTTP/%d", resp.Proto, want)
			}
			req.Model = "deepseek-reasoner" // not on search's allow-list: the certificate named the tenant
			_, err := c.Chat.Completions.New(ctx, req)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusForbidden {
				t.Fatalf("a model off the allow-list: %v, want 403", err)
			}
		})
	}
	// Without a certificate or a token: 401.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Post(fx.base+"/chat/completions", "application/json",
		strings.NewReader(`{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no credentials over TLS: %s, want 401", resp.Status)
	}
}
