package router

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// The tests in this file each guard one fault of "each caller gets its own
// call": identical requests share one upstream call, but never the first
// caller's quota, hints, identity or provenance.

// gate holds every call to a provider until opened, so that identical
// requests pile up on one shared call.
type gate struct {
	open    chan struct{}
	arrived atomic.Int64
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) wait(ctx context.Context) error {
	g.arrived.Add(1)
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestCoalescedCallersAreChargedTheirOwnQuota: a tenant within its quota is
// served, and a tenant over its quota is refused naming itself, even when
// both send the same cacheable request at once (the quota used to be charged
// inside the shared call, to whichever caller started it).
func TestCoalescedCallersAreChargedTheirOwnQuota(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Tenants = []regions.Tenant{
		{Principal: regions.Principal{Name: "rich"}, QPS: 1000, Burst: 1000},
		{Principal: regions.Principal{Name: "poor"}, QPS: 0.001, Burst: 1},
	}
	r := newTestRouter(t, fx, cfg)
	// poor spends its one call.
	if _, err := r.Complete(auth.WithTenant(context.Background(), "poor"), detReq("warm up")); err != nil {
		t.Fatal(err)
	}
	g := newGate()
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
		return &detourv1.CompleteResponse{Content: "shared", FinishReason: "stop"}, nil
	}
	var wg sync.WaitGroup
	results := map[string]error{}
	var mu sync.Mutex
	// rich starts the shared call; poor then asks the same.
	wg.Go(func() {
		_, err := r.Complete(auth.WithTenant(context.Background(), "rich"), detReq("same"))
		mu.Lock()
		results["rich"] = err
		mu.Unlock()
	})
	waitFor(t, func() bool { return g.arrived.Load() == 1 }, "rich's call to reach the backend")
	_, err := r.Complete(auth.WithTenant(context.Background(), "poor"), detReq("same"))
	mu.Lock()
	results["poor"] = err
	mu.Unlock()
	close(g.open)
	wg.Wait()
	if results["rich"] != nil {
		t.Errorf("rich (within its quota): %v, want an answer", results["rich"])
	}
	var re *Error
	if !errors.As(results["poor"], &re) || re.Code != OverQuota || !strings.Contains(re.Message, `"poor"`) {
		t.Errorf("poor (over its quota): %v, want OverQuota naming poor", results["poor"])
	}
}

// TestJoinerWithNoFallbackNeverGetsAFallbackAnswer: a caller that forbids
// fallbacks (routing.no_fallback, say for compliance) does not join an
// identical call that a fallback may answer: it makes its own, and gets no
// fallback answer.
func TestJoinerWithNoFallbackNeverGetsAFallbackAnswer(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Retry.MaxAttempts = 1
	for _, name := range []string{"home-1", "near-1", "far-1"} {
		fx.provider(name).complete = busy
	}
	g := newGate()
	fx.provider("fb-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
		return &detourv1.CompleteResponse{Content: "from the fallback", FinishReason: "stop"}, nil
	}
	r := newTestRouter(t, fx, cfg)
	done := make(chan *detourv1.CompleteResponse, 1)
	go func() {
		resp, _ := r.Complete(context.Background(), detReq("same"))
		done <- resp
	}()
	waitFor(t, func() bool { return g.arrived.Load() == 1 }, "the first call to reach the fallback")
	strict := detReq("same")
	strict.Routing = &detourv1.RoutingHints{NoFallback: true}
	resp, err := r.Complete(context.Background(), strict)
	close(g.open)
	if first := <-done; first.GetSource() != detourv1.Source_SOURCE_FALLBACK {
		t.Errorf("the first caller: source %v, want FALLBACK", first.GetSource())
	}
	if err == nil || resp.GetSource() == detourv1.Source_SOURCE_FALLBACK {
		t.Errorf("the no_fallback caller: %v, %v; want no fallback answer (every primary is busy)", resp.GetSource(), err)
	}
}

// TestUpstreamProvenanceIsKept: a detour backend's answer from its stale
// cache reaches the caller as STALE_CACHE, not LIVE, and is not stored as a
// fresh answer (the next identical call asks again).
func TestUpstreamProvenanceIsKept(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	cfg.Regions[0].Backends[0].Kind = regions.KindDetour
	cfg.Regions[0].Backends[0].Endpoint = "127.0.0.1:1"
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return &detourv1.CompleteResponse{Content: "old", FinishReason: "stop", Source: detourv1.Source_SOURCE_STALE_CACHE}, nil
	}
	r := newTestRouter(t, fx, cfg)
	for i := range 2 {
		resp, err := r.Complete(context.Background(), detReq("same"))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSource() != detourv1.Source_SOURCE_STALE_CACHE {
			t.Errorf("call %d: source %v, want STALE_CACHE as the backend said", i, resp.GetSource())
		}
	}
	if n := home.calls.Load(); n != 2 {
		t.Errorf("%d upstream calls for 2 identical calls, want 2: a stale answer is never stored as fresh", n)
	}
	// And a backend's fallback answer stays a fallback answer.
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return &detourv1.CompleteResponse{Content: "other provider", FinishReason: "stop", Source: detourv1.Source_SOURCE_FALLBACK}, nil
	}
	if resp, err := r.Complete(context.Background(), detReq("other")); err != nil || resp.GetSource() != detourv1.Source_SOURCE_FALLBACK {
		t.Errorf("a detour backend's fallback answer: %v, %v; want FALLBACK", resp.GetSource(), err)
	}
}

// slowSend is a stream sink that takes wait to accept each chunk.
func slowSend(wait time.Duration) func(*detourv1.CompleteChunk) error {
	return func(*detourv1.CompleteChunk) error {
		time.Sleep(wait) // the slow reader under test, not a test wait
		return nil
	}
}

// TestSlowReaderDoesNotTripTheBreaker: the gap timer between an upstream's
// chunks does not run while detour waits for a slow caller to take one; a
// healthy backend's breaker stays closed however slowly its callers read.
func TestSlowReaderDoesNotTripTheBreaker(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	cfg.Fallbacks = nil
	cfg.Regions[0].Backends[0].Timeout = regions.Duration(20 * time.Millisecond)
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveFailures: 1}
	fx.provider("home-1").stream = func(ctx context.Context) (ChunkStream, error) {
		return &ctxChunks{ctx: ctx, chunks: []string{"a", "b", "c", "d"}}, nil
	}
	r := newTestRouter(t, fx, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() {
			errs <- r.Stream(context.Background(), req(), slowSend(40*time.Millisecond))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a slow reader's stream: %v", err)
		}
	}
	if st := backendState(r, "home-1"); st.Breaker != breaker.Closed {
		t.Errorf("breaker %v after slow readers, want closed", st.Breaker)
	}
}

// TestMisdirectedBackendIsTriedElsewhere: an upstream that refuses detour's
// own credentials (401/403) or has no such endpoint (404) is the backend's
// fault: the call is tried on another backend and the breaker counts it;
// when every backend refuses, the caller gets INTERNAL with no upstream text
// (not INVALID_ARGUMENT quoting the upstream).
func TestMisdirectedBackendIsTriedElsewhere(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveFailures: 2}
	refuse := func(code int) func(context.Context) (*detourv1.CompleteResponse, error) {
		return func(context.Context) (*detourv1.CompleteResponse, error) { return nil, httpErr{code: code} }
	}
	fx.provider("home-1").complete = refuse(401)
	r := newTestRouter(t, fx, cfg)
	for range 3 {
		resp, err := r.Complete(context.Background(), req())
		if err != nil || resp.GetServedBy().GetBackend() == "home-1" {
			t.Fatalf("%v, %v; want another backend to answer", resp.GetServedBy().GetBackend(), err)
		}
	}
	if st := backendState(r, "home-1"); st.Breaker != breaker.Open {
		t.Errorf("home-1 (refuses detour's credentials) breaker %v, want open", st.Breaker)
	}
	for _, name := range []string{"near-1", "far-1", "fb-1"} {
		fx.provider(name).complete = refuse(404)
	}
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Internal {
		t.Fatalf("every backend refuses: %v, want Internal", err)
	}
	if strings.Contains(re.Message, "HTTP") {
		t.Errorf("message %q quotes the upstream", re.Message)
	}
}

// TestProviderPanicInAHedgeIsInternal: a provider that panics in a hedged
// attempt (on a goroutine of its own, where a panic would end the process)
// ends the call with INTERNAL; the process lives and the attempt's slot is
// given back.
func TestProviderPanicInAHedgeIsInternal(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Retry.HedgeAfter = regions.Duration(time.Millisecond)
	// Every backend panics: which attempt is the hedge depends on timing
	// (a slow first attempt lets the hedge start elsewhere), the outcome
	// does not.
	backends := []string{"home-1", "near-1", "far-1", "fb-1"}
	for _, name := range backends {
		fx.provider(name).complete = func(context.Context) (*detourv1.CompleteResponse, error) {
			panic("provider bug")
		}
	}
	r := newTestRouter(t, fx, cfg)
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Internal || re.Message != "internal error" {
		t.Fatalf("err = %v, want Internal", err)
	}
	for _, name := range backends {
		if st := backendState(r, name); st.Capacity.InFlight != 0 {
			t.Errorf("%s has %d slots in flight after the panic, want 0 (the slot is given back)", name, st.Capacity.InFlight)
		}
	}
}

// TestOldRetryAfterDoesNotHoldALaterTrip: a Retry-After seen while the
// breaker was closed is not remembered: a trip much later stays open for
// open_for, not for the old hint (the hint used to be kept until the next
// close and published to every replica).
func TestOldRetryAfterDoesNotHoldALaterTrip(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveFailures: 2, OpenFor: regions.Duration(time.Second)}
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return nil, httpErr{code: 429, ra: 10 * time.Minute}
	}
	r := newClockedRouter(t, fx, cfg, clk)
	servedBy(t, r, context.Background()) // one busy answer with a long Retry-After
	home.complete = nil
	clk.Advance(time.Hour)
	servedWithin(t, r, "home-1", "an hour later")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) { return nil, syscall.ECONNREFUSED }
	for range 20 {
		servedBy(t, r, context.Background())
		if backendState(r, "home-1").Breaker == breaker.Open {
			break
		}
	}
	st := backendState(r, "home-1")
	if st.Breaker != breaker.Open {
		t.Fatal("home-1's breaker did not open")
	}
	if got := st.OpenUntil.Sub(clk.Now()); got != time.Second {
		t.Errorf("open for %v, want open_for (1s), not the old Retry-After", got)
	}
}

// ctxChunks is an upstream stream whose chunks are all there at once and
// that fails, as a real one does, once its context ends.
type ctxChunks struct {
	ctx    context.Context
	chunks []string
	i      int
}

func (s *ctxChunks) Recv() (*detourv1.CompleteChunk, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	if s.i == len(s.chunks) {
		return nil, io.EOF
	}
	s.i++
	ch := &detourv1.CompleteChunk{Delta: s.chunks[s.i-1]}
	if s.i == len(s.chunks) {
		ch.FinishReason = "stop"
	}
	return ch, nil
}

func (s *ctxChunks) Close() error { return nil }
