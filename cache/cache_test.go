package cache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock that only moves when told to.

type clock = testkit.Clock

func newClock() *clock { return testkit.NewClock(time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)) }

// eventually waits until cond holds, failing t after a deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Until(t, 5*time.Second, what, cond)
}

func newCache(t *testing.T, cfg Config, store *fleet.Store, opts ...Option) *Cache {
	t.Helper()
	c := New(cfg, store, opts...)
	t.Cleanup(func() { c.Close() })
	return c
}

// openStore opens a fleet.Store on a test Redis under a fresh prefix.
func openStore(t *testing.T, addr, prefix string) *fleet.Store {
	t.Helper()
	s, err := fleet.Open(fleet.Config{Addr: addr, KeyPrefix: prefix, Timeout: 100 * time.Millisecond, Backoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func request(content string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model:       "deepseek-chat",
		Messages:    []*detourv1.Message{{Role: "user", Content: content}},
		Temperature: ptr(0.0),
	}
}

func answer(content string) *detourv1.CompleteResponse {
	return &detourv1.CompleteResponse{
		Id: "chatcmpl-1", Model: "deepseek-chat", Content: content, FinishReason: "stop",
		Usage:    &detourv1.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5},
		ServedBy: &detourv1.ServedBy{Region: "eu-west", Backend: "eu-1"},
		Source:   detourv1.Source_SOURCE_LIVE, Attempts: 2,
	}
}

// cached is what a hit on answer(content) returns.
func cached(content string, src detourv1.Source, age time.Duration) *detourv1.CompleteResponse {
	r := answer(content)
	r.Source, r.Attempts, r.Age = src, 0, durationpb.New(age)
	return r
}

func TestPlan(t *testing.T) {
	hints := func(h *detourv1.CacheHints) func(*detourv1.CompleteRequest) {
		return func(r *detourv1.CompleteRequest) { r.Cache = h }
	}
	temp := func(v *float64) func(*detourv1.CompleteRequest) {
		return func(r *detourv1.CompleteRequest) { r.Temperature = v }
	}
	tests := []struct {
		name   string
		cfg    Config
		change func(*detourv1.CompleteRequest)
		want   Plan // without Key
	}{
		{name: "temperature 0", change: temp(ptr(0.0)),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow}},
		{name: "temperature unset", change: temp(nil), want: Plan{Reason: "nondeterministic"}},
		{name: "temperature unset, deterministic backends", cfg: Config{Deterministic: true}, change: temp(nil),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow}},
		{name: "temperature 0.7", cfg: Config{Deterministic: true}, change: temp(ptr(0.7)), want: Plan{Reason: "nondeterministic"}},
		{name: "force_cache", change: func(r *detourv1.CompleteRequest) {
			r.Temperature = ptr(1.0)
			r.Cache = &detourv1.CacheHints{ForceCache: true}
		}, want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow}},
		{name: "no_cache wins", change: hints(&detourv1.CacheHints{NoCache: true, ForceCache: true}), want: Plan{Reason: "no_cache"}},
		{name: "disabled", cfg: Config{Disabled: true}, change: temp(ptr(0.0)), want: Plan{Reason: "disabled"}},
		{name: "configured ttl and window", cfg: Config{TTL: time.Minute, StaleWindow: 10 * time.Minute}, change: temp(ptr(0.0)),
			want: Plan{Cacheable: true, TTL: time.Minute, MaxStale: 10 * time.Minute}},
		{name: "no stale window", cfg: Config{StaleWindow: -1}, change: temp(ptr(0.0)),
			want: Plan{Cacheable: true, TTL: DefaultTTL}},
		{name: "ttl hint, tenant scope", cfg: Config{Scope: ScopeTenant}, change: hints(&detourv1.CacheHints{Ttl: durationpb.New(30 * time.Second)}),
			want: Plan{Cacheable: true, TTL: 30 * time.Second, MaxStale: DefaultStaleWindow}},
		{name: "ttl hint capped, tenant scope", cfg: Config{Scope: ScopeTenant, MaxTTL: time.Hour}, change: hints(&detourv1.CacheHints{Ttl: durationpb.New(48 * time.Hour)}),
			want: Plan{Cacheable: true, TTL: time.Hour, MaxStale: DefaultStaleWindow}},
		{name: "shorter ttl hint, shared scope: the caller's max age", change: hints(&detourv1.CacheHints{Ttl: durationpb.New(30 * time.Second)}),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxAge: 30 * time.Second, MaxStale: DefaultStaleWindow}},
		{name: "longer ttl hint, shared scope: ignored", change: hints(&detourv1.CacheHints{Ttl: durationpb.New(48 * time.Hour)}),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow}},
		{name: "routing hints", change: func(r *detourv1.CompleteRequest) {
			r.Temperature = ptr(0.0)
			r.Routing = &detourv1.RoutingHints{PreferRegion: "eu", NoFallback: true}
		}, want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow, Route: "1eu"}},
		{name: "max_stale narrows", change: hints(&detourv1.CacheHints{MaxStale: durationpb.New(time.Minute)}),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: time.Minute}},
		{name: "max_stale cannot widen", change: hints(&detourv1.CacheHints{MaxStale: durationpb.New(48 * time.Hour)}),
			want: Plan{Cacheable: true, TTL: DefaultTTL, MaxStale: DefaultStaleWindow}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, tt.cfg, nil)
			r := request("hi")
			tt.change(r)
			got := c.Plan(r, Caller{})
			if got.Cacheable != (got.Key != Key{}) {
				t.Errorf("Cacheable %v with key %v", got.Cacheable, got.Key)
			}
			got.Key = Key{}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Plan (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLocalHitMissExpiry(t *testing.T) {
	clk := newClock()
	c := newCache(t, Config{TTL: time.Minute, StaleWindow: time.Hour}, nil, WithClock(clk.Now))
	ctx := context.Background()
	p := c.Plan(request("hi"), Caller{})
	if _, ok := c.Get(ctx, p); ok {
		t.Fatal("hit in an empty cache")
	}
	c.Put(p, answer("hello"))
	clk.Advance(20 * time.Second)
	hit, ok := c.Get(ctx, p)
	if !ok {
		t.Fatal("miss after Put")
	}
	if diff := cmp.Diff(hit.Response(), cached("hello", detourv1.Source_SOURCE_CACHE, 20*time.Second), protocmp.Transform()); diff != "" {
		t.Errorf("Response (-got +want):\n%s", diff)
	}
	if _, ok := c.Get(ctx, c.Plan(request("other"), Caller{})); ok {
		t.Error("hit for another request")
	}
	clk.Advance(40 * time.Second) // TTL over
	if _, ok := c.Get(ctx, p); ok {
		t.Error("Get hit after the TTL")
	}
	got := c.Stats()
	want := Stats{LocalHits: 1, Misses: 3, Stored: 1, Entries: 1, Bytes: got.Bytes}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

// Stale answers come only from GetStale, within the stale window and the
// request's max_stale, marked STALE_CACHE with their age.
func TestStale(t *testing.T) {
	clk := newClock()
	c := newCache(t, Config{TTL: time.Minute, StaleWindow: 10 * time.Minute}, nil, WithClock(clk.Now))
	ctx := context.Background()
	req := request("hi")
	p := c.Plan(req, Caller{})
	c.Put(p, answer("hello"))

	hit, ok := c.GetStale(ctx, p)
	if !ok || hit.Stale {
		t.Fatalf("GetStale on a fresh answer: ok %v, stale %v; want a fresh hit", ok, hit != nil && hit.Stale)
	}

	clk.Advance(3 * time.Minute) // 2 minutes stale
	if _, ok := c.Get(ctx, p); ok {
		t.Error("Get served a stale answer")
	}
	hit, ok = c.GetStale(ctx, p)
	if !ok {
		t.Fatal("GetStale missed within the stale window")
	}
	if diff := cmp.Diff(hit.Response(), cached("hello", detourv1.Source_SOURCE_STALE_CACHE, 3*time.Minute), protocmp.Transform()); diff != "" {
		t.Errorf("stale Response (-got +want):\n%s", diff)
	}

	narrow := request("hi")
	narrow.Cache = &detourv1.CacheHints{MaxStale: durationpb.New(time.Minute)}
	if _, ok := c.GetStale(ctx, c.Plan(narrow, Caller{})); ok {
		t.Error("GetStale ignored max_stale: served an answer 2m past its TTL for max_stale 1m")
	}
	wide := request("hi")
	wide.Cache = &detourv1.CacheHints{MaxStale: durationpb.New(5 * time.Minute)}
	if _, ok := c.GetStale(ctx, c.Plan(wide, Caller{})); !ok {
		t.Error("GetStale missed within max_stale")
	}

	clk.Advance(8 * time.Minute) // past TTL + window
	if _, ok := c.GetStale(ctx, p); ok {
		t.Error("GetStale served an answer past the stale window")
	}
}

func TestNoStaleWindow(t *testing.T) {
	clk := newClock()
	c := newCache(t, Config{TTL: time.Minute, StaleWindow: -1}, nil, WithClock(clk.Now))
	p := c.Plan(request("hi"), Caller{})
	c.Put(p, answer("hello"))
	clk.Advance(time.Minute + time.Second)
	if _, ok := c.GetStale(context.Background(), p); ok {
		t.Error("GetStale served a stale answer with no stale window")
	}
}

// The local tier holds at most MaxBytes and evicts the least recently used.
func TestByteBound(t *testing.T) {
	ctx := context.Background()
	probe := New(Config{}, nil)
	p0 := probe.Plan(request("q0"), Caller{})
	probe.Put(p0, answer(strings.Repeat("x", 1000)))
	size := probe.Stats().Bytes // the accounted size of one entry
	probe.Close()

	c := newCache(t, Config{MaxBytes: 5 * size}, nil)
	plans := make([]Plan, 8)
	for i := range plans {
		plans[i] = c.Plan(request(fmt.Sprintf("q%d", i)), Caller{})
	}
	for i := range 5 {
		c.Put(plans[i], answer(strings.Repeat("x", 1000)))
	}
	c.Get(ctx, plans[0]) // q0 is now the most recently used
	for i := 5; i < 8; i++ {
		c.Put(plans[i], answer(strings.Repeat("x", 1000)))
	}
	var got []int
	for i, p := range plans {
		if _, ok := c.Get(ctx, p); ok {
			got = append(got, i)
		}
	}
	// Five fit: q1, q2 and q3 made room for q5, q6 and q7; q0 was used.
	if diff := cmp.Diff(got, []int{0, 4, 5, 6, 7}); diff != "" {
		t.Errorf("entries kept (-got +want):\n%s", diff)
	}
	if s := c.Stats(); s.Bytes > 5*size || s.Entries != len(got) {
		t.Errorf("Stats = %+v, want at most %d bytes in %d entries", s, 5*size, len(got))
	}

	// An answer over MaxEntryBytes is not stored.
	small := newCache(t, Config{MaxEntryBytes: 500}, nil)
	p := small.Plan(request("big"), Caller{})
	small.Put(p, answer(strings.Repeat("x", 1000)))
	if _, ok := small.Get(ctx, p); ok {
		t.Error("an answer over MaxEntryBytes was stored")
	}
}

func TestPutOnlyLive(t *testing.T) {
	tests := []struct {
		src  detourv1.Source
		want bool
	}{
		{detourv1.Source_SOURCE_LIVE, true},
		{detourv1.Source_SOURCE_UNSPECIFIED, true},
		{detourv1.Source_SOURCE_FALLBACK, false},
		{detourv1.Source_SOURCE_CACHE, false},
		{detourv1.Source_SOURCE_STALE_CACHE, false},
	}
	for _, tt := range tests {
		t.Run(tt.src.String(), func(t *testing.T) {
			c := newCache(t, Config{}, nil)
			p := c.Plan(request("hi"), Caller{})
			a := answer("hello")
			a.Source = tt.src
			c.Put(p, a)
			if _, got := c.Get(context.Background(), p); got != tt.want {
				t.Errorf("stored %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNotCacheable(t *testing.T) {
	c := newCache(t, Config{}, nil)
	r := request("hi")
	r.Temperature = ptr(0.8)
	p := c.Plan(r, Caller{})
	c.Put(p, answer("hello"))
	if _, ok := c.Get(context.Background(), p); ok {
		t.Error("a nondeterministic request was cached")
	}
	if s := c.Stats(); s.Stored != 0 {
		t.Errorf("Stored = %d, want 0", s.Stored)
	}
}

// A stream is stored as its chunks and replayed as they came; a unary
// answer replays as one chunk; a stored stream joins into one response.
func TestStreamReplay(t *testing.T) {
	clk := newClock()
	c := newCache(t, Config{}, nil, WithClock(clk.Now))
	ctx := context.Background()
	sb := &detourv1.ServedBy{Region: "eu-west", Backend: "eu-1"}
	live := []*detourv1.CompleteChunk{
		{Id: "s1", Model: "m", Delta: "Hel", ServedBy: sb, Source: detourv1.Source_SOURCE_LIVE, Attempts: 1},
		{Id: "s1", Model: "m", Delta: "lo", ServedBy: sb, Source: detourv1.Source_SOURCE_LIVE, Attempts: 1},
		{Id: "s1", Model: "m", FinishReason: "stop", Usage: &detourv1.Usage{TotalTokens: 4}, ServedBy: sb, Source: detourv1.Source_SOURCE_LIVE, Attempts: 1},
	}
	p := c.Plan(request("stream me"), Caller{})
	var relayed []*detourv1.CompleteChunk
	err := c.Stream(ctx, p, func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		for _, ch := range live {
			if err := send(ch); err != nil {
				return err
			}
		}
		return nil
	}, func(ch *detourv1.CompleteChunk) error { relayed = append(relayed, ch); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(relayed, live, protocmp.Transform()); diff != "" {
		t.Errorf("relayed chunks (-got +want):\n%s", diff)
	}

	clk.Advance(time.Second)
	hit, ok := c.Get(ctx, p)
	if !ok {
		t.Fatal("completed stream not stored")
	}
	var replayed []*detourv1.CompleteChunk
	if err := hit.Replay(func(ch *detourv1.CompleteChunk) error { replayed = append(replayed, ch); return nil }); err != nil {
		t.Fatal(err)
	}
	var want []*detourv1.CompleteChunk
	for _, ch := range live {
		w := proto.CloneOf(ch)
		w.Source, w.Attempts, w.Age = detourv1.Source_SOURCE_CACHE, 0, durationpb.New(time.Second)
		want = append(want, w)
	}
	if diff := cmp.Diff(replayed, want, protocmp.Transform()); diff != "" {
		t.Errorf("replayed chunks (-got +want):\n%s", diff)
	}
	wantResp := &detourv1.CompleteResponse{Id: "s1", Model: "m", Content: "Hello", FinishReason: "stop",
		Usage: &detourv1.Usage{TotalTokens: 4}, ServedBy: sb, Source: detourv1.Source_SOURCE_CACHE, Age: durationpb.New(time.Second)}
	if diff := cmp.Diff(hit.Response(), wantResp, protocmp.Transform()); diff != "" {
		t.Errorf("joined Response (-got +want):\n%s", diff)
	}

	// A unary answer replays as one chunk.
	pu := c.Plan(request("unary"), Caller{})
	c.Put(pu, answer("whole"))
	hit, _ = c.Get(ctx, pu)
	replayed = nil
	hit.Replay(func(ch *detourv1.CompleteChunk) error { replayed = append(replayed, ch); return nil })
	one := &detourv1.CompleteChunk{Id: "chatcmpl-1", Model: "deepseek-chat", Delta: "whole", FinishReason: "stop",
		Usage:    &detourv1.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5},
		ServedBy: &detourv1.ServedBy{Region: "eu-west", Backend: "eu-1"}, Source: detourv1.Source_SOURCE_CACHE, Age: durationpb.New(0)}
	if diff := cmp.Diff(replayed, []*detourv1.CompleteChunk{one}, protocmp.Transform()); diff != "" {
		t.Errorf("unary replay (-got +want):\n%s", diff)
	}
}

// A streamed answer with reasoning, tool calls in pieces and logprobs is
// cached under the same rules as text: it joins into whole calls, and a
// unary answer with tool calls replays as one chunk that joins back to it.
func TestToolCallAnswers(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	c := newCache(t, Config{}, nil, WithClock(clk.Now))
	sb := &detourv1.ServedBy{Region: "eu-west", Backend: "eu-1"}
	lp := func(tok string) *detourv1.Logprobs {
		return &detourv1.Logprobs{Content: []*detourv1.TokenLogprob{{Token: tok, Logprob: -0.5, Bytes: []byte(tok)}}}
	}
	live := []*detourv1.CompleteChunk{
		{Id: "s1", Model: "m", ReasoningDelta: "The user ", ServedBy: sb},
		{Id: "s1", Model: "m", ReasoningDelta: "wants weather.", ServedBy: sb},
		{Id: "s1", Model: "m", Delta: "Let me look.", Logprobs: lp("Let"), ServedBy: sb},
		{Id: "s1", Model: "m", ToolCallDeltas: []*detourv1.ToolCallDelta{{Index: 0, Id: "call_a", Type: "function",
			Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: ""}}}, ServedBy: sb},
		{Id: "s1", Model: "m", ToolCallDeltas: []*detourv1.ToolCallDelta{{Index: 0, Function: &detourv1.FunctionCall{Arguments: `{"city":`}}}, ServedBy: sb},
		{Id: "s1", Model: "m", ToolCallDeltas: []*detourv1.ToolCallDelta{
			{Index: 0, Function: &detourv1.FunctionCall{Arguments: `"Paris"}`}},
			{Index: 1, Id: "call_b", Type: "function", Function: &detourv1.FunctionCall{Name: "get_time", Arguments: `{}`}},
		}, Logprobs: lp("."), ServedBy: sb},
		{Id: "s1", Model: "m", FinishReason: "tool_calls", Usage: &detourv1.Usage{TotalTokens: 9, ReasoningTokens: ptr(int32(4))}, ServedBy: sb},
	}
	p := c.Plan(request("weather in Paris?"), Caller{})
	c.PutStream(p, live)
	hit, ok := c.Get(ctx, p)
	if !ok {
		t.Fatal("tool-call stream not stored")
	}
	want := &detourv1.CompleteResponse{Id: "s1", Model: "m", Content: "Let me look.", ReasoningContent: "The user wants weather.",
		ToolCalls: []*detourv1.ToolCall{
			{Id: "call_a", Type: "function", Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: `{"city":"Paris"}`}},
			{Id: "call_b", Type: "function", Function: &detourv1.FunctionCall{Name: "get_time", Arguments: `{}`}},
		},
		Logprobs:     &detourv1.Logprobs{Content: append(lp("Let").Content, lp(".").Content...)},
		FinishReason: "tool_calls", Usage: &detourv1.Usage{TotalTokens: 9, ReasoningTokens: ptr(int32(4))},
		ServedBy: sb, Source: detourv1.Source_SOURCE_CACHE, Age: durationpb.New(0)}
	if diff := cmp.Diff(hit.Response(), want, protocmp.Transform()); diff != "" {
		t.Errorf("joined Response (-got +want):\n%s", diff)
	}

	// The joined answer stored as a unary one replays as one chunk, which
	// joins back to the same answer.
	pu := c.Plan(request("weather, unary"), Caller{})
	unary := proto.CloneOf(want)
	unary.Source, unary.Age = detourv1.Source_SOURCE_LIVE, nil
	c.Put(pu, unary)
	hit, _ = c.Get(ctx, pu)
	var replayed []*detourv1.CompleteChunk
	hit.Replay(func(ch *detourv1.CompleteChunk) error { replayed = append(replayed, ch); return nil })
	if len(replayed) != 1 {
		t.Fatalf("unary answer replayed as %d chunks, want 1", len(replayed))
	}
	joined := assemble(replayed)
	joined.Source, joined.Age = want.Source, want.Age
	if diff := cmp.Diff(joined, want, protocmp.Transform()); diff != "" {
		t.Errorf("replayed unary answer joins to (-got +want):\n%s", diff)
	}
}

// A stream that fails is not stored.
func TestStreamFailedNotStored(t *testing.T) {
	c := newCache(t, Config{}, nil)
	ctx := context.Background()
	p := c.Plan(request("x"), Caller{})
	boom := fmt.Errorf("upstream broke")
	var n int
	err := c.Stream(ctx, p, func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		send(&detourv1.CompleteChunk{Delta: "half", Source: detourv1.Source_SOURCE_LIVE})
		return boom
	}, func(*detourv1.CompleteChunk) error { n++; return nil })
	if err != boom || n != 1 {
		t.Errorf("Stream: err %v after %d chunks, want %v after 1", err, n, boom)
	}
	if _, ok := c.Get(ctx, p); ok {
		t.Error("a broken stream was stored")
	}
}

// Two replicas share answers through Redis; the second keeps a copy.
func TestSharedTier(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	ctx := context.Background()
	a := newCache(t, Config{}, openStore(t, addr, prefix))
	b := newCache(t, Config{}, openStore(t, addr, prefix))
	p := a.Plan(request("shared"), Caller{})
	a.Put(p, answer("from a"))
	var hit *Hit
	eventually(t, "b to find a's answer in Redis", func() bool {
		var ok bool
		hit, ok = b.Get(ctx, p)
		return ok
	})
	if got := hit.Response().GetContent(); got != "from a" {
		t.Errorf("content %q, want %q", got, "from a")
	}
	if _, ok := b.Get(ctx, p); !ok {
		t.Fatal("second Get missed")
	}
	s := b.Stats()
	if s.SharedHits != 1 || s.LocalHits != 1 {
		t.Errorf("b Stats = %+v, want one shared hit then one local hit", s)
	}
	local := newCache(t, Config{LocalOnly: true}, openStore(t, addr, prefix))
	if _, ok := local.Get(ctx, p); ok {
		t.Error("a LocalOnly cache read Redis")
	}
}

func TestSharedTierStale(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	clk := newClock()
	ctx := context.Background()
	cfg := Config{TTL: time.Minute, StaleWindow: time.Hour}
	a := newCache(t, cfg, openStore(t, addr, prefix), WithClock(clk.Now))
	b := newCache(t, cfg, openStore(t, addr, prefix), WithClock(clk.Now))
	p := a.Plan(request("shared stale"), Caller{})
	a.Put(p, answer("old"))
	eventually(t, "the answer to reach Redis", func() bool { _, ok := b.Get(ctx, p); return ok })
	c := newCache(t, cfg, openStore(t, addr, prefix), WithClock(clk.Now))
	clk.Advance(2 * time.Minute)
	if _, ok := c.Get(ctx, p); ok {
		t.Error("Get served a stale answer from Redis")
	}
	hit, ok := c.GetStale(ctx, p)
	if !ok || !hit.Stale || hit.Age != 2*time.Minute {
		t.Errorf("GetStale from Redis: ok %v, hit %+v; want stale, age 2m", ok, hit)
	}
}

// Redis killed mid-test: the cache keeps answering from its local tier,
// misses what only Redis had, returns no error, costs no more than the
// timeout, and uses Redis again once it is back.
func TestSharedTierRedisKilled(t *testing.T) {
	srv := fleettest.Start(t)
	prefix := fleettest.Prefix(t)
	ctx := context.Background()
	storeA, storeB := openStore(t, srv.Addr, prefix), openStore(t, srv.Addr, prefix)
	a := newCache(t, Config{RedisTimeout: 100 * time.Millisecond}, storeA)
	b := newCache(t, Config{RedisTimeout: 100 * time.Millisecond}, storeB)
	p1 := a.Plan(request("one"), Caller{})
	a.Put(p1, answer("1"))
	eventually(t, "b to see answer 1", func() bool { _, ok := b.Get(ctx, p1); return ok })

	srv.Kill()
	p2 := a.Plan(request("two"), Caller{})
	a.Put(p2, answer("2")) // Redis write fails in the background
	if _, ok := a.Get(ctx, p2); !ok {
		t.Error("a lost its own answer with Redis down")
	}
	if _, ok := b.Get(ctx, p1); !ok {
		t.Error("b lost its local copy with Redis down")
	}
	start := time.Now()
	for range 10 {
		if _, ok := b.Get(ctx, p2); ok {
			t.Fatal("b found answer 2 with Redis down")
		}
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("10 misses with Redis down took %v", took)
	}

	srv.Restart()
	p3 := a.Plan(request("three"), Caller{})
	eventually(t, "the stores to use Redis again", func() bool {
		a.Put(p3, answer("3"))
		_, ok := b.Get(ctx, p3)
		return ok
	})
}

// A Redis that stops answering costs a lookup at most RedisTimeout, once;
// then the shared tier is skipped until the backoff ends.
func TestSharedTierSlowRedis(t *testing.T) {
	srv := fleettest.Start(t)
	store, err := fleet.Open(fleet.Config{Addr: srv.Addr, KeyPrefix: fleettest.Prefix(t), Backoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const timeout = 50 * time.Millisecond
	c := newCache(t, Config{RedisTimeout: timeout}, store)
	ctx := context.Background()
	p := c.Plan(request("slow"), Caller{})
	if _, ok := c.Get(ctx, p); ok {
		t.Fatal("hit in an empty cache")
	}
	srv.Pause()
	defer srv.Resume()
	for i, bound := range []time.Duration{timeout + time.Second, 100 * time.Millisecond} {
		start := time.Now()
		_, ok := c.Get(ctx, p)
		// Bounds, not measurements: generous for a loaded machine.
		if took := time.Since(start); ok || took > bound {
			t.Errorf("Get %d against a paused Redis: hit %v after %v, want a miss within %v", i, ok, took, bound)
		}
	}
	c.Put(p, answer("kept locally")) // no Redis write attempted
	if _, ok := c.Get(ctx, p); !ok {
		t.Error("local tier missed with Redis paused")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "zero", cfg: Config{}},
		{name: "negative stale window means none", cfg: Config{StaleWindow: -1, MaxBytes: -1}},
		{name: "negative ttl", cfg: Config{TTL: -time.Second}, wantErr: true},
		{name: "ttl over max_ttl", cfg: Config{TTL: time.Hour, MaxTTL: time.Minute}, wantErr: true},
		{name: "negative timeouts", cfg: Config{RedisTimeout: -1, CoalesceTimeout: -1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}
