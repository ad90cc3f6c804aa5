package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// kinds is a detour with one simulated provider, reached two ways: region
// "http" over OpenAI HTTP, region "chain" through a second detour (kind
// detour) that reaches the same provider over HTTP. The same request gets
// the same answer both ways.
type kinds struct {
	c    detourv1.RouterClient
	fake *fakellm.Server
	// direct calls the provider's own gRPC service, for the usage it
	// reports.
	direct detourv1.RouterClient
}

var kindNames = []string{"http", "chain"}

func startKinds(t *testing.T, st fakellm.Settings, tune func(b *regions.Backend)) *kinds {
	t.Helper()
	f := startFake(t, fakellm.Config{Region: "sim", Name: "sim-1", Settings: st}, true)
	inner := regions.Backend{Name: "inner-1", Endpoint: "http://" + f.HTTPAddr() + "/v1"}
	tune(&inner)
	innerAddr, _ := runMain(t, &Main{Listen: "127.0.0.1:0", Region: "up", Grace: 5 * time.Second,
		config: &regions.Config{Regions: []regions.Region{{Name: "up", Backends: []regions.Backend{inner}}}}})
	h := regions.Backend{Name: "http-1", Endpoint: "http://" + f.HTTPAddr() + "/v1"}
	tune(&h)
	chain := regions.Backend{Name: "chain-1", Kind: regions.KindDetour, Endpoint: innerAddr.String()}
	tune(&chain)
	cfg := &regions.Config{Regions: []regions.Region{
		{Name: "http", Backends: []regions.Backend{h}},
		{Name: "chain", Priority: 1, Backends: []regions.Backend{chain}},
	}}
	cc, err := grpc.NewClient(f.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &kinds{c: startDetour(t, cfg, "http"), fake: f, direct: detourv1.NewRouterClient(cc)}
}

// complete calls Complete, and StreamComplete with the chunks joined as the
// cache joins them, both preferring region kind.
func (k *kinds) both(t *testing.T, kind string, req *detourv1.CompleteRequest) (unary, streamed *detourv1.CompleteResponse) {
	t.Helper()
	req = proto.CloneOf(req)
	req.Routing = &detourv1.RoutingHints{PreferRegion: kind, NoFallback: true}
	unary, err := k.c.Complete(callCtx(t), req)
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if got := unary.GetServedBy().GetRegion(); got != kind {
		t.Fatalf("served by region %q, want %q", got, kind)
	}
	st, err := k.c.StreamComplete(callCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var chunks []*detourv1.CompleteChunk
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d chunks: %v", len(chunks), err)
		}
		chunks = append(chunks, ch)
	}
	return unary, joinChunks(chunks)
}

// joinChunks puts a stream together: content, reasoning and logprobs in
// order, tool calls by index.
func joinChunks(chunks []*detourv1.CompleteChunk) *detourv1.CompleteResponse {
	r := &detourv1.CompleteResponse{}
	for _, c := range chunks {
		r.Id, r.Model, r.ServedBy, r.Source, r.Attempts = c.GetId(), c.GetModel(), c.GetServedBy(), c.GetSource(), c.GetAttempts()
		r.Content += c.GetDelta()
		r.ReasoningContent += c.GetReasoningDelta()
		for _, d := range c.GetToolCallDeltas() {
			for int(d.GetIndex()) >= len(r.ToolCalls) {
				r.ToolCalls = append(r.ToolCalls, &detourv1.ToolCall{Function: &detourv1.FunctionCall{}})
			}
			tc := r.ToolCalls[d.GetIndex()]
			if d.GetId() != "" {
				tc.Id, tc.Type, tc.Function.Name = d.GetId(), d.GetType(), d.GetFunction().GetName()
			}
			tc.Function.Arguments += d.GetFunction().GetArguments()
		}
		if lp := c.GetLogprobs(); lp != nil {
			if r.Logprobs == nil {
				r.Logprobs = &detourv1.Logprobs{}
			}
			r.Logprobs.Content = append(r.Logprobs.Content, lp.GetContent()...)
		}
		if c.GetFinishReason() != "" {
			r.FinishReason = c.GetFinishReason()
		}
		if c.GetUsage() != nil {
			r.Usage = c.GetUsage()
		}
	}
	return r
}

// upstream is what the provider answers req directly.
func (k *kinds) upstream(t *testing.T, req *detourv1.CompleteRequest) *detourv1.CompleteResponse {
	t.Helper()
	resp, err := k.direct.Complete(callCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// answerParts are the parts of an answer a caller reads, without the
// routing fields.
func answerParts(r *detourv1.CompleteResponse) *detourv1.CompleteResponse {
	return &detourv1.CompleteResponse{Id: r.GetId(), Model: r.GetModel(), Content: r.GetContent(), ReasoningContent: r.GetReasoningContent(),
		ToolCalls: r.GetToolCalls(), Logprobs: r.GetLogprobs(), FinishReason: r.GetFinishReason(), Usage: r.GetUsage()}
}

// Reasoning, tools (with the result sent back), JSON mode and logprobs
// make the same round trip through detour, unary and streamed, over HTTP
// and detour→detour: the caller gets what the provider answered, usage
// (cache hits and reasoning tokens) included.
func TestFeaturesRoundTrip(t *testing.T) {
	k := startKinds(t, fakellm.Settings{ThinkTokens: 5}, func(*regions.Backend) {})
	weather := &detourv1.Tool{Type: "function", Function: &detourv1.FunctionDefinition{Name: "get_weather",
		Description: "Weather in a city", Parameters: `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`}}
	tests := []struct {
		name  string
		req   *detourv1.CompleteRequest
		check func(t *testing.T, got *detourv1.CompleteResponse)
	}{
		{
			name: "reasoning",
			req:  &detourv1.CompleteRequest{Model: "deepseek-reasoner", Messages: []*detourv1.Message{{Role: "user", Content: "why is the sky blue"}}},
			check: func(t *testing.T, got *detourv1.CompleteResponse) {
				if !strings.HasPrefix(got.GetReasoningContent(), "[sim] thinking:") || got.GetUsage().GetReasoningTokens() != 5 {
					t.Errorf("reasoning %q, %d reasoning tokens; want a think phase of 5", got.GetReasoningContent(), got.GetUsage().GetReasoningTokens())
				}
			},
		},
		{
			name: "thinking switch",
			req: &detourv1.CompleteRequest{Model: "deepseek-chat", Thinking: &detourv1.Thinking{Type: "enabled"}, ReasoningEffort: "high",
				Messages: []*detourv1.Message{{Role: "user", Content: "think first"}}},
			check: func(t *testing.T, got *detourv1.CompleteResponse) {
				if got.GetReasoningContent() == "" {
					t.Error("no reasoning with thinking enabled")
				}
			},
		},
		{
			name: "tool call",
			req: &detourv1.CompleteRequest{Model: "deepseek-chat", Tools: []*detourv1.Tool{weather}, ParallelToolCalls: proto.Bool(false),
				ToolChoice: &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "auto"}},
				Messages:   []*detourv1.Message{{Role: "user", Content: "Lyon"}}},
			check: func(t *testing.T, got *detourv1.CompleteResponse) {
				if len(got.GetToolCalls()) != 1 || got.GetToolCalls()[0].GetFunction().GetArguments() != `{"city":"Lyon"}` || got.GetFinishReason() != "tool_calls" {
					t.Errorf("answer %v, want get_weather({\"city\":\"Lyon\"})", got)
				}
			},
		},
		{
			name: "tool result sent back",
			req: &detourv1.CompleteRequest{Model: "deepseek-chat", Tools: []*detourv1.Tool{weather},
				Messages: []*detourv1.Message{
					{Role: "user", Content: "Lyon"},
					{Role: "assistant", ToolCalls: []*detourv1.ToolCall{{Id: "call_1", Type: "function",
						Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: `{"city":"Lyon"}`}}}},
					{Role: "tool", ToolCallId: "call_1", Content: "19 degrees, cloudy"},
				}},
			check: func(t *testing.T, got *detourv1.CompleteResponse) {
				if !strings.HasPrefix(got.GetContent(), "[sim] result: 19 degrees, cloudy") || got.GetUsage().GetPromptCacheHitTokens() == 0 {
					t.Errorf("answer %v, want the result in text and cache hits for the earlier turns", got)
				}
			},
		},
		{
			name: "json mode with logprobs and sampling controls",
			req: &detourv1.CompleteRequest{Model: "deepseek-chat", ResponseFormat: &detourv1.ResponseFormat{Type: "json_object"},
				Logprobs: true, TopLogprobs: proto.Int32(2), FrequencyPenalty: proto.Float64(0.5), PresencePenalty: proto.Float64(-0.5),
				Seed: proto.Int64(7), MaxCompletionTokens: 500, ExtraBody: `{"top_k": 20}`,
				Messages: []*detourv1.Message{{Role: "user", Content: "reply in json"}}},
			check: func(t *testing.T, got *detourv1.CompleteResponse) {
				var v map[string]string
				if err := json.Unmarshal([]byte(got.GetContent()), &v); err != nil || v["answer"] == "" {
					t.Errorf("content %q is not the JSON answer: %v", got.GetContent(), err)
				}
				if n := len(got.GetLogprobs().GetContent()); n == 0 || len(got.GetLogprobs().GetContent()[0].GetTopLogprobs()) != 2 {
					t.Errorf("logprobs %v, want 2 alternatives per token", got.GetLogprobs())
				}
			},
		},
	}
	for _, tt := range tests {
		want := answerParts(k.upstream(t, tt.req))
		for _, kind := range kindNames {
			t.Run(tt.name+"/"+kind, func(t *testing.T) {
				unary, streamed := k.both(t, kind, tt.req)
				tt.check(t, unary)
				if diff := cmp.Diff(answerParts(unary), want, protocmp.Transform()); diff != "" {
					t.Errorf("unary answer vs the provider's (-got +want):\n%s", diff)
				}
				if diff := cmp.Diff(answerParts(streamed), want, protocmp.Transform()); diff != "" {
					t.Errorf("streamed answer vs the provider's (-got +want):\n%s", diff)
				}
				if unary.GetAttempts() != 1 || streamed.GetAttempts() != 1 {
					t.Errorf("attempts %d and %d, want 1", unary.GetAttempts(), streamed.GetAttempts())
				}
			})
		}
	}
}

// A think phase streamed for several times the gap timeout is alive: the
// stream succeeds on its first attempt.
func TestLongThinkPhaseOutlivesGapTimeout(t *testing.T) {
	const gap = 200 * time.Millisecond
	k := startKinds(t, fakellm.Settings{ThinkTokens: 12, ThinkInterval: gap / 4}, func(b *regions.Backend) {
		b.Timeout = regions.Duration(gap) // 12 reasoning chunks take 3 gaps
	})
	req := &detourv1.CompleteRequest{Model: "deepseek-reasoner", Messages: []*detourv1.Message{{Role: "user", Content: "think long"}}}
	for _, kind := range kindNames {
		t.Run(kind, func(t *testing.T) {
			_, streamed := k.both(t, kind, req)
			if streamed.GetAttempts() != 1 || streamed.GetUsage().GetReasoningTokens() != 12 || streamed.GetContent() == "" {
				t.Errorf("stream %v, want the whole answer on the first attempt", streamed)
			}
		})
	}
}

// queued is a detour whose preferred backend keeps calls in its queue for
// a while, sending keep-alives, and whose other region answers at once.
func startQueued(t *testing.T, delay, gap, queueTimeout time.Duration) (detourv1.RouterClient, *fakellm.Server) {
	t.Helper()
	slow := startFake(t, fakellm.Config{Region: "slow", Name: "slow-1", Settings: fakellm.Settings{
		QueueDelay: delay, KeepAliveInterval: gap / 5}}, false)
	other := startFake(t, fakellm.Config{Region: "other", Name: "other-1"}, false)
	b := openaiBackend("slow-1", slow)
	b.Timeout, b.QueueTimeout = regions.Duration(gap), regions.Duration(queueTimeout)
	cfg := &regions.Config{Regions: []regions.Region{
		{Name: "slow", Backends: []regions.Backend{b}},
		{Name: "other", Priority: 1, Backends: []regions.Backend{openaiBackend("other-1", other)}},
	}}
	return startDetour(t, cfg, "slow"), slow
}

// A call queued upstream for several gap timeouts, kept alive by
// keep-alives, succeeds within queue_timeout; past queue_timeout it fails
// over. Unary and streamed.
func TestQueuedCallWithKeepAlives(t *testing.T) {
	const gap = 150 * time.Millisecond
	const delay = 5 * gap
	req := userReq("queued for a while")
	for _, stream := range []bool{false, true} {
		name := map[bool]string{false: "unary", true: "stream"}[stream]
		t.Run(name+"/within queue_timeout", func(t *testing.T) {
			c, _ := startQueued(t, delay, gap, 4*delay)
			got := call(t, c, req, stream)
			if got.GetServedBy().GetBackend() != "slow-1" || got.GetAttempts() != 1 {
				t.Errorf("served by %s in %d attempts, want slow-1 in 1", got.GetServedBy().GetBackend(), got.GetAttempts())
			}
		})
		t.Run(name+"/past queue_timeout", func(t *testing.T) {
			c, slow := startQueued(t, 20*delay, gap, delay/2)
			got := call(t, c, req, stream)
			if got.GetServedBy().GetBackend() != "other-1" || got.GetAttempts() != 2 {
				t.Errorf("served by %s in %d attempts, want other-1 in 2", got.GetServedBy().GetBackend(), got.GetAttempts())
			}
			if s := slow.Stats(); s.Total != 1 {
				t.Errorf("slow backend got %d requests, want 1", s.Total)
			}
		})
	}
	t.Run("without queue_timeout keep-alives do not extend the wait", func(t *testing.T) {
		c, _ := startQueued(t, delay, gap, 0)
		if got := call(t, c, req, false); got.GetServedBy().GetBackend() != "other-1" {
			t.Errorf("served by %s, want other-1: the queue outlasts the timeout", got.GetServedBy().GetBackend())
		}
	})
}

// call makes one call, unary or streamed (joined).
func call(t *testing.T, c detourv1.RouterClient, req *detourv1.CompleteRequest, stream bool) *detourv1.CompleteResponse {
	t.Helper()
	if !stream {
		resp, err := c.Complete(callCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	chunks, err := streamAll(t, c, req)
	if err != nil {
		t.Fatal(err)
	}
	return joinChunks(chunks)
}

// A JSON-mode answer with blank content is retried elsewhere and never
// cached, over HTTP and through a second detour.
func TestBlankJSONIsRetriedNotCached(t *testing.T) {
	req := &detourv1.CompleteRequest{Model: "deepseek-chat", Temperature: proto.Float64(0), // cacheable
		ResponseFormat: &detourv1.ResponseFormat{Type: "json_object"}, Messages: []*detourv1.Message{{Role: "user", Content: "json"}}}
	for _, kind := range kindNames {
		for _, stream := range []bool{false, true} {
			t.Run(kind+map[bool]string{false: "/unary", true: "/stream"}[stream], func(t *testing.T) {
				blank := startFake(t, fakellm.Config{Region: "blank", Name: "blank-1", Settings: fakellm.Settings{JSONBlankRate: 1}}, false)
				good := startFake(t, fakellm.Config{Region: "good", Name: "good-1"}, false)
				first := openaiBackend("blank-1", blank)
				if kind == "chain" {
					innerAddr, _ := runMain(t, &Main{Listen: "127.0.0.1:0", Region: "up", Grace: 5 * time.Second,
						config: &regions.Config{Regions: []regions.Region{{Name: "up", Backends: []regions.Backend{first}}}}})
					first = regions.Backend{Name: "blank-1", Kind: regions.KindDetour, Endpoint: innerAddr.String()}
				}
				cfg := &regions.Config{Regions: []regions.Region{
					{Name: "blank", Backends: []regions.Backend{first}},
					{Name: "good", Priority: 1, Backends: []regions.Backend{openaiBackend("good-1", good)}},
				}}
				c := startDetour(t, cfg, "blank")
				got := call(t, c, req, stream)
				if got.GetServedBy().GetBackend() != "good-1" || got.GetAttempts() != 2 || strings.TrimSpace(got.GetContent()) == "" {
					t.Fatalf("answer %v, want good-1's in 2 attempts", got)
				}
				// The good answer is the one cached: the next call is a hit.
				again := call(t, c, req, stream)
				if again.GetSource() != detourv1.Source_SOURCE_CACHE || again.GetContent() != got.GetContent() {
					t.Errorf("second call source %v content %q, want the cached good answer", again.GetSource(), again.GetContent())
				}
			})
		}
	}
	t.Run("blank only", func(t *testing.T) {
		blank := startFake(t, fakellm.Config{Region: "blank", Name: "blank-1", Settings: fakellm.Settings{JSONBlankRate: 1}}, false)
		c := startDetour(t, &regions.Config{Regions: []regions.Region{{Name: "blank", Backends: []regions.Backend{openaiBackend("blank-1", blank)}}}}, "blank")
		if _, err := c.Complete(callCtx(t), req); err == nil {
			t.Fatal("a blank answer from the only backend succeeded")
		}
		if err := blank.SetSettings(fakellm.Settings{}); err != nil {
			t.Fatal(err)
		}
		got, err := c.Complete(callCtx(t), req)
		if err != nil || got.GetSource() != detourv1.Source_SOURCE_LIVE || strings.TrimSpace(got.GetContent()) == "" {
			t.Errorf("after the backend recovered: %v, %v; want a live answer, not a cached blank one", got, err)
		}
	})
}

// 402 Insufficient Balance: the call is tried on another backend, and the
// exhausted one stays out of rotation for exhausted_for; with no other
// primary, the fallback answers.
func TestExhaustedAccount(t *testing.T) {
	broke := startFake(t, fakellm.Config{Region: "home", Name: "broke-1", Settings: fakellm.Settings{ExhaustedRate: 1}}, false)
	other := startFake(t, fakellm.Config{Region: "away", Name: "away-1"}, false)
	fb := startFake(t, fakellm.Config{Region: "fallback", Name: "fb-1"}, false)
	b := openaiBackend("broke-1", broke)
	b.ExhaustedFor = regions.Duration(time.Hour)
	t.Run("other backend", func(t *testing.T) {
		c := startDetour(t, &regions.Config{Regions: []regions.Region{
			{Name: "home", Backends: []regions.Backend{b}},
			{Name: "away", Priority: 1, Backends: []regions.Backend{openaiBackend("away-1", other)}},
		}}, "home")
		for i := range 5 {
			for _, stream := range []bool{false, true} {
				got := call(t, c, userReq("pay me"), stream)
				if got.GetServedBy().GetBackend() != "away-1" {
					t.Fatalf("call %d served by %s, want away-1", i, got.GetServedBy().GetBackend())
				}
			}
		}
		if n := broke.Stats().Total; n != 1 {
			t.Errorf("the exhausted backend got %d requests, want 1: it should be out of rotation", n)
		}
	})
	t.Run("fallback", func(t *testing.T) {
		broke.ResetStats()
		b.Name = "broke-2" // a backend of its own, not yet out of rotation
		c := startDetour(t, &regions.Config{
			Regions:   []regions.Region{{Name: "home", Backends: []regions.Backend{b}}},
			Fallbacks: []regions.Backend{openaiBackend("fb-1", fb)},
		}, "home")
		got := call(t, c, userReq("pay me"), false)
		if got.GetSource() != detourv1.Source_SOURCE_FALLBACK || got.GetServedBy().GetBackend() != "fb-1" {
			t.Errorf("answer from %s (%v), want the fallback", got.GetServedBy().GetBackend(), got.GetSource())
		}
	})
}

// send_tenant_as passes the caller's tenant upstream as DeepSeek's user_id
// (or OpenAI's user).
func TestTenantSentUpstream(t *testing.T) {
	var mu sync.Mutex
	var bodies []map[string]any
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"c","model":"m","choices":[{"message":{"content":"ok"},"finish_reason":"stop"}]}`)
	}))
	t.Cleanup(up.Close)
	for _, as := range []string{regions.TenantAsUserID, regions.TenantAsUser, ""} {
		t.Run("as="+as, func(t *testing.T) {
			b := regions.Backend{Name: "up-1", Endpoint: up.URL + "/v1", SendTenantAs: as}
			c := startDetour(t, &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{b}}}}, "a")
			req := userReq("who am I")
			req.User = "end-user-7"
			ctx := metadata.AppendToOutgoingContext(callCtx(t), "x-detour-tenant", "team-blue")
			if _, err := c.Complete(ctx, req); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			got := bodies[len(bodies)-1]
			mu.Unlock()
			want := map[string]any{"user": "end-user-7"}
			switch as {
			case regions.TenantAsUserID:
				want["user_id"] = "team-blue"
			case regions.TenantAsUser:
				want["user"] = "team-blue"
			}
			gotIDs := map[string]any{}
			for _, k := range []string{"user", "user_id"} {
				if v, ok := got[k]; ok {
					gotIDs[k] = v
				}
			}
			if diff := cmp.Diff(gotIDs, want); diff != "" {
				t.Errorf("identity sent upstream (-got +want):\n%s", diff)
			}
		})
	}
}

// Token counters per backend, tenant and kind equal the usage the provider
// reported, reasoning and cache hits included; cached answers add nothing;
// the call line carries the counts and no content.
func TestTokenMetrics(t *testing.T) {
	f := startFake(t, fakellm.Config{Region: "home", Name: "home-1", Settings: fakellm.Settings{ThinkTokens: 4}}, true)
	cfg := &regions.Config{
		Regions: []regions.Region{{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", f)}}},
		Tenants: []regions.Tenant{{Principal: regions.Principal{Name: "team-blue"}}},
	}
	logs := &lockedBuffer{}
	addr, maddr := runMain(t, &Main{Listen: "127.0.0.1:0", Region: "home", Grace: 5 * time.Second, config: cfg,
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
		Observe: ObserveOptions{MetricsAddr: "127.0.0.1:0", LogCalls: true}})
	c := dial(t, addr.String())
	req := &detourv1.CompleteRequest{Model: "deepseek-reasoner", Temperature: proto.Float64(0), // cacheable
		Messages: []*detourv1.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "secret prompt words"}}}
	var want *detourv1.Usage
	// The second call is a cache hit; the third, another tenant's, skips the
	// cache.
	for i, tenant := range []string{"team-blue", "team-blue", "someone-else"} {
		r := proto.CloneOf(req)
		if tenant == "someone-else" {
			r.Cache = &detourv1.CacheHints{NoCache: true}
		}
		resp, err := c.Complete(metadata.AppendToOutgoingContext(callCtx(t), "x-detour-tenant", tenant), r)
		if err != nil {
			t.Fatal(err)
		}
		want = resp.GetUsage()
		if i == 1 && resp.GetSource() != detourv1.Source_SOURCE_CACHE {
			t.Fatalf("second call source %v, want a cache hit", resp.GetSource())
		}
	}
	if want.GetReasoningTokens() != 4 || want.GetPromptCacheHitTokens() == 0 {
		t.Fatalf("usage %v, want reasoning and cache-hit tokens", want)
	}
	fams := scrape(t, maddr)
	for _, tenant := range []string{"team-blue", "other"} {
		for kind, n := range map[string]int32{"prompt": want.GetPromptTokens(), "completion": want.GetCompletionTokens(),
			"prompt_cache_hit": want.GetPromptCacheHitTokens(), "prompt_cache_miss": want.GetPromptCacheMissTokens(),
			"reasoning": want.GetReasoningTokens()} {
			labels := map[string]string{"backend": "home-1", "tenant": tenant, "kind": kind}
			if got, ok := value(fams, "detour_tokens_total", labels); !ok || got != float64(n) {
				t.Errorf("detour_tokens_total%v = %v (present %v), want %d (one live answer)", labels, got, ok, n)
			}
		}
	}
	for _, field := range []string{`"reasoning_tokens":4`, `"cache_hit_tokens":`, `"prompt_tokens":`} {
		if !strings.Contains(logs.String(), field) {
			t.Errorf("call log lacks %s", field)
		}
	}
	if strings.Contains(logs.String(), "secret prompt") || strings.Contains(logs.String(), "thinking") {
		t.Error("content reached the log")
	}
}
