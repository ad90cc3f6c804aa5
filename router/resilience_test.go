package router

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// clock is a manual clock for the router, its breakers, quotas and budget.

type clock = testkit.Clock

func newClock() *clock { return testkit.NewClock(time.Unix(1_700_000_000, 0)) }

func newClockedRouter(t *testing.T, fx *fixture, cfg *regions.Config, clk *clock) *Router {
	t.Helper()
	r, err := New(&regions.Snapshot{Config: cfg}, Options{
		Region: "home", NewProvider: fx.newProvider, Now: clk.Now, Logger: quiet,
		BreakerOptions: []breaker.Option{breaker.WithClock(clk.Now)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func servedBy(t *testing.T, r *Router, ctx context.Context) (string, error) {
	t.Helper()
	resp, err := r.Complete(ctx, req())
	return resp.GetServedBy().GetBackend(), err
}

func TestBreakerTripsAndRecovers(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 3, OpenFor: regions.Duration(5 * time.Second), HalfOpenProbes: 1}
	home := fx.provider("home-1")
	home.complete = busy
	r := newClockedRouter(t, fx, cfg, clk)
	for range 10 {
		if got, err := servedBy(t, r, context.Background()); err != nil || got != "near-1" {
			t.Fatalf("served by %q, %v; want near-1 while home-1 is busy", got, err)
		}
	}
	if n := home.calls.Load(); n != 3 {
		t.Errorf("busy home-1 got %d calls, want 3: its breaker opens after 3 busy answers", n)
	}
	// Recovered, but the breaker stays open until OpenFor has passed.
	home.complete = nil
	if got, _ := servedBy(t, r, context.Background()); got != "near-1" {
		t.Errorf("before OpenFor: served by %q, want near-1", got)
	}
	clk.Advance(5 * time.Second)
	// The region draw may still send a call or two to near-1 (home-1's
	// recent busy share counts against it for a while); within a few calls
	// the half-open probe reaches home-1, succeeds and closes the breaker.
	probed := false
	for range 20 {
		if got, _ := servedBy(t, r, context.Background()); got == "home-1" {
			probed = true
			break
		}
	}
	if !probed {
		t.Fatal("after OpenFor: home-1 served none of 20 calls, want the half-open probe to reach it")
	}
	if st := r.Backends()[0]; st.Name != "home-1" || st.Breaker != breaker.Closed {
		t.Errorf("after a good probe: %s breaker %v, want home-1 closed", st.Name, st.Breaker)
	}
}

func TestRetryAfterHoldsBreakerOpen(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 1, OpenFor: regions.Duration(time.Second), HalfOpenProbes: 1}
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return nil, httpErr{code: 429, ra: 30 * time.Second}
	}
	r := newClockedRouter(t, fx, cfg, clk)
	servedBy(t, r, context.Background())
	home.complete = nil
	clk.Advance(10 * time.Second) // past OpenFor, within Retry-After
	if got, _ := servedBy(t, r, context.Background()); got != "near-1" {
		t.Errorf("within Retry-After: served by %q, want near-1", got)
	}
	clk.Advance(21 * time.Second)
	servedWithin(t, r, "home-1", "after Retry-After")
}

func TestClientErrorsAndCancellationNeverTrip(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 2}
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) { return nil, httpErr{code: 400} }
	r := newClockedRouter(t, fx, cfg, clk)
	for range 5 {
		servedBy(t, r, context.Background())
	}
	for range 5 {
		// The caller goes away while the attempt is in flight.
		ctx, cancel := context.WithCancel(context.Background())
		home.complete = func(actx context.Context) (*detourv1.CompleteResponse, error) {
			cancel()
			<-actx.Done()
			return nil, actx.Err()
		}
		if _, err := servedBy(t, r, ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	}
	if st := r.tab.Load().byName["home-1"].br.State(); st != breaker.Closed {
		t.Errorf("breaker %v after client errors and cancellations, want closed", st)
	}
}

func TestRetryBudgetCapsRetries(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Fallbacks = nil
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 1000, MinRequests: 1000}
	cfg.Retry.BudgetRatio = 0.2
	cfg.Retry.BudgetMinPerSecond = 0.1 // 1 retry per 10 s window
	upstream := func() int64 {
		var n int64
		for _, name := range []string{"home-1", "near-1", "far-1"} {
			n += fx.provider(name).calls.Load()
		}
		return n
	}
	for _, name := range []string{"home-1", "near-1", "far-1"} {
		fx.provider(name).complete = busy
	}
	r := newClockedRouter(t, fx, cfg, clk)
	const calls = 100
	for range calls {
		r.Complete(context.Background(), req())
	}
	retries := upstream() - calls
	// 20% of 100 requests plus the floor of 1 per window.
	if retries < 15 || retries > 21 {
		t.Errorf("%d retries for %d busy calls, want about 20%% (15..21)", retries, calls)
	}
	// A new window restores the budget.
	clk.Advance(11 * time.Second)
	before := upstream()
	r.Complete(context.Background(), req())
	if got := upstream() - before; got != 2 {
		t.Errorf("%d upstream calls after the window passed, want 2 (a retry)", got)
	}
}

// TestBackoffNeverOverrunsDeadline: a retry on the backend the call already
// tried (the sole one) waits a backoff first, and not when the backoff
// would overrun the caller's deadline.
func TestBackoffNeverOverrunsDeadline(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	cfg.Fallbacks = nil
	cfg.Retry.BackoffBase = regions.Duration(time.Hour)
	cfg.Retry.BackoffMax = regions.Duration(time.Hour)
	fx.provider("home-1").complete = busy
	r := newTestRouter(t, fx, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := r.Complete(ctx, req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Unavailable {
		t.Fatalf("err = %v, want Unavailable without retrying", err)
	}
	if n := fx.provider("home-1").calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1: the retry's backoff would overrun the deadline", n)
	}
}

// TestRetryElsewhereWithoutBackoff: a retry on another backend does not
// wait: that backend has not said it is busy.
func TestRetryElsewhereWithoutBackoff(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Fallbacks = nil
	cfg.Retry.BackoffBase = regions.Duration(time.Hour)
	cfg.Retry.BackoffMax = regions.Duration(time.Hour)
	fx.provider("home-1").complete = busy
	r := newTestRouter(t, fx, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := r.Complete(ctx, req())
	if err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if got := resp.GetServedBy().GetBackend(); got != "near-1" {
		t.Errorf("served by %q, want near-1", got)
	}
}

func TestLimitsSkipBackends(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Fallbacks = nil
	cfg.Regions[0].Backends[0].QPS = 10 // burst 1
	cfg.Regions[1].Backends[0].MaxConcurrency = 1
	r := newClockedRouter(t, fx, cfg, clk)
	if got, _ := servedBy(t, r, context.Background()); got != "home-1" {
		t.Fatalf("first call served by %q, want home-1", got)
	}
	if got, _ := servedBy(t, r, context.Background()); got != "near-1" {
		t.Errorf("home-1 over its qps: served by %q, want near-1", got)
	}
	// Hold near-1's only slot; with home-1 still over qps, far-1 answers.
	release, started := make(chan struct{}), make(chan struct{})
	fx.provider("near-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		close(started)
		<-release
		return &detourv1.CompleteResponse{}, nil
	}
	done := make(chan struct{})
	go func() { defer close(done); servedBy(t, r, context.Background()) }()
	<-started
	if got, _ := servedBy(t, r, context.Background()); got != "far-1" {
		t.Errorf("near-1 at max_concurrency: served by %q, want far-1", got)
	}
	close(release)
	<-done
	clk.Advance(time.Second)
	if got, _ := servedBy(t, r, context.Background()); got != "home-1" {
		t.Errorf("after a second: served by %q, want home-1 again", got)
	}
}

func TestEveryBackendLimitedIsExhausted(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Fallbacks = nil
	for i := range cfg.Regions {
		cfg.Regions[i].Backends[0].QPS = 1
	}
	r := newClockedRouter(t, fx, cfg, clk)
	for range 3 {
		if _, err := r.Complete(context.Background(), req()); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Exhausted || re.RetryAfter <= 0 {
		t.Errorf("err = %v, want Exhausted with a retry hint", err)
	}
}

func TestTenantQuota(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Tenants = []regions.Tenant{{Principal: regions.Principal{Name: "small"}, QPS: 2, Burst: 2}}
	cfg.Limits.TenantQPS = 100
	r := newClockedRouter(t, fx, cfg, clk)
	small := auth.WithTenant(context.Background(), "small")
	var codes []Code
	for range 3 {
		_, err := r.Complete(small, req())
		var re *Error
		if errors.As(err, &re) {
			codes = append(codes, re.Code)
			if re.RetryAfter != 500*time.Millisecond {
				t.Errorf("retry after %v, want 500ms for a 2 qps quota", re.RetryAfter)
			}
		} else {
			codes = append(codes, 0)
		}
	}
	if diff := cmp.Diff(codes, []Code{0, 0, OverQuota}); diff != "" {
		t.Errorf("codes of 3 calls at a 2-call burst (-got +want):\n%s", diff)
	}
	// Another tenant has its own quota.
	if _, err := r.Complete(auth.WithTenant(context.Background(), "big"), req()); err != nil {
		t.Errorf("another tenant refused: %v", err)
	}
	clk.Advance(500 * time.Millisecond)
	if _, err := r.Complete(small, req()); err != nil {
		t.Errorf("after refill: %v", err)
	}
}

func TestBusyBackendLosesTraffic(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 1000, MinRequests: 1000} // balancing only
	cfg.Regions[0].Backends = append(cfg.Regions[0].Backends, regions.Backend{Name: "home-2", Endpoint: "http://127.0.0.1:1/v1"})
	var n int
	fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		n++
		if n%2 == 0 { // half busy, answering at once
			return nil, httpErr{code: 503}
		}
		return &detourv1.CompleteResponse{}, nil
	}
	fx.provider("home-2").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		clk.Advance(20 * time.Millisecond) // slower, but never busy
		return &detourv1.CompleteResponse{}, nil
	}
	r := newClockedRouter(t, fx, cfg, clk)
	for range 200 {
		r.Complete(context.Background(), req())
	}
	h1, h2 := fx.provider("home-1").calls.Load(), fx.provider("home-2").calls.Load()
	if h1*3 > h2 {
		t.Errorf("half-busy fast home-1 got %d calls, healthy slower home-2 %d: want home-1 under a quarter", h1, h2)
	}
}

func TestHedging(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Retry.HedgeAfter = regions.Duration(10 * time.Millisecond)
	slowStarted := make(chan struct{})
	var slowErr error
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		close(slowStarted)
		<-ctx.Done() // never answers; cancelled when the hedge wins
		slowErr = ctx.Err()
		return nil, ctx.Err()
	}
	r := newTestRouter(t, fx, cfg)
	resp, err := r.Complete(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if got := []any{resp.GetServedBy().GetBackend(), resp.GetAttempts()}; !cmp.Equal(got, []any{"near-1", int32(2)}) {
		t.Errorf("(backend, attempt) = %v, want near-1 answering the hedge", got)
	}
	<-slowStarted
	if !errors.Is(slowErr, context.Canceled) {
		t.Errorf("slow first attempt ended with %v, want it cancelled", slowErr)
	}
	if st := r.tab.Load().byName["home-1"].br.State(); st != breaker.Closed {
		t.Errorf("the losing attempt counted against home-1: breaker %v", st)
	}
}

func TestFallbackOrder(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Fallbacks = append(cfg.Fallbacks, regions.Backend{Name: "fb-2", Endpoint: "http://127.0.0.1:1/v1"})
	for _, n := range []string{"home-1", "near-1", "far-1", "fb-1"} {
		fx.provider(n).complete = busy
	}
	r := newTestRouter(t, fx, cfg)
	resp, err := r.Complete(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetServedBy().GetBackend(); got != "fb-2" || resp.GetSource() != detourv1.Source_SOURCE_FALLBACK {
		t.Errorf("served by %s (%v), want fb-2 FALLBACK after fb-1 was busy", got, resp.GetSource())
	}
	if fx.provider("fb-1").calls.Load() != 1 {
		t.Error("fb-1 was not tried first")
	}
	// no_fallback forbids it.
	r2 := req()
	r2.Routing = &detourv1.RoutingHints{NoFallback: true}
	if _, err := r.Complete(context.Background(), r2); err == nil {
		t.Error("no_fallback call answered, want an error")
	}
}

// TestResetBreaker: an operator's reset closes a dead backend's breaker at
// once (it takes calls again before OpenFor has passed), and so does
// undraining it.
func TestResetBreaker(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveFailures: 2, OpenFor: regions.Duration(time.Hour)}
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return nil, syscall.ECONNREFUSED
	}
	r := newClockedRouter(t, fx, cfg, clk)
	openHome := func() {
		t.Helper()
		for range 20 {
			if got, err := servedBy(t, r, context.Background()); err != nil || got != "near-1" {
				t.Fatalf("served by %q, %v; want near-1 while home-1 refuses connections", got, err)
			}
			if r.Backends()[0].Breaker == breaker.Open {
				return
			}
		}
		t.Fatal("home-1's breaker did not open after 20 calls")
	}
	openHome()
	home.complete = nil // repaired
	if got, _ := servedBy(t, r, context.Background()); got != "near-1" {
		t.Fatalf("before the reset: served by %q, want near-1 (home-1 open for an hour)", got)
	}
	if was, err := r.ResetBreaker("home-1"); err != nil || !was {
		t.Fatalf("ResetBreaker = %v, %v; want true", was, err)
	}
	servedWithin(t, r, "home-1", "after the reset")
	if _, err := r.ResetBreaker("nope"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("ResetBreaker(nope) = %v, want ErrUnknownBackend", err)
	}

	// Undraining resets it too.
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return nil, syscall.ECONNREFUSED
	}
	openHome()
	if err := r.SetDrained("home-1", true); err != nil {
		t.Fatal(err)
	}
	home.complete = nil
	if err := r.SetDrained("home-1", false); err != nil {
		t.Fatal(err)
	}
	servedWithin(t, r, "home-1", "after undrain")
}

// servedWithin asserts that backend answers one of the next 20 calls: the
// region draw may send a call elsewhere while the backend's recent failures
// still count against it, but an open breaker would send none.
func servedWithin(t *testing.T, r *Router, backend, when string) {
	t.Helper()
	for range 20 {
		if got, _ := servedBy(t, r, context.Background()); got == backend {
			return
		}
	}
	t.Errorf("%s: %s served none of 20 calls", when, backend)
}

// TestRetryAfterCannotCloseABackendForADay: busy answers with
// "Retry-After: 99999999" open a backend's breaker for breaker.max_open (2m
// by default), not for days; the caller's RetryInfo says when it really
// reopens; and a reset ends it.
func TestRetryAfterCannotCloseABackendForADay(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	cfg.Fallbacks = nil
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveBusy: 5}
	cfg.Retry.MaxAttempts = 1
	cfg.Retry.BudgetRatio, cfg.Retry.BudgetMinPerSecond = 0.0001, 0.0001 // no attempt past the open breaker
	home := fx.provider("home-1")
	home.complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return nil, httpErr{code: 503, ra: 99999999 * time.Second}
	}
	r := newClockedRouter(t, fx, cfg, clk)
	for range 5 {
		r.Complete(context.Background(), req())
	}
	st := backendState(r, "home-1")
	if st.Breaker != breaker.Open {
		t.Fatalf("breaker %v, want open", st.Breaker)
	}
	if want := clk.Now().Add(breaker.DefaultMaxOpen); !st.OpenUntil.Equal(want) {
		t.Errorf("open until %v, want now + %v", st.OpenUntil.Sub(clk.Now()), breaker.DefaultMaxOpen)
	}
	clk.Advance(30 * time.Second)
	// The first call spends the retry budget on one attempt past the open
	// breaker (busy again): its hint is the upstream's Retry-After, capped.
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) || re.RetryAfter <= 0 || re.RetryAfter > breaker.DefaultMaxOpen {
		t.Errorf("err = %v, want a RetryAfter in (0, %v]", err, breaker.DefaultMaxOpen)
	}
	// The next finds the budget spent: no attempt, and the hint is when the
	// breaker really reopens.
	_, err = r.Complete(context.Background(), req())
	if !errors.As(err, &re) || re.Attempts != 0 || re.RetryAfter != breaker.DefaultMaxOpen-30*time.Second {
		t.Errorf("err = %v (%d attempts), want no attempt and a RetryAfter of %v (when the breaker reopens)", err, re.Attempts, breaker.DefaultMaxOpen-30*time.Second)
	}
	home.complete = nil
	clk.Advance(breaker.DefaultMaxOpen)
	if got, err := servedBy(t, r, context.Background()); err != nil || got != "home-1" {
		t.Errorf("after max_open: %q, %v; want home-1 probed and serving", got, err)
	}
}
