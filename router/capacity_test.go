package router

import (
	"context"
	"errors"
	"math"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/capacity"
	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// blocker makes a provider hold every call until released, counting the
// calls in flight.
type blocker struct {
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func newBlocker() *blocker { return &blocker{release: make(chan struct{})} }

func (b *blocker) complete(ctx context.Context) (*detourv1.CompleteResponse, error) {
	b.mu.Lock()
	b.n++
	b.mu.Unlock()
	select {
	case <-b.release:
		return &detourv1.CompleteResponse{Content: "late"}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *blocker) inflight() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// staticLimits turns the adaptive limits off and gives every backend one
// slot, so that which backend has room is known.
func staticLimits(cfg *regions.Config) {
	cfg.Capacity = regions.CapacityPolicy{Disabled: true}
	for i := range cfg.Regions {
		for j := range cfg.Regions[i].Backends {
			cfg.Regions[i].Backends[j].MaxConcurrency = 1
		}
	}
	for i := range cfg.Fallbacks {
		cfg.Fallbacks[i].MaxConcurrency = 1
	}
}

// TestSpillOverOrder: a call that finds a backend at its limit goes to the
// next candidate with room, in the order own region, other regions by
// priority, then fallbacks; with every one full it waits (here: refused at
// once, with no wait allowed) with RESOURCE_EXHAUSTED and a retry hint.
func TestSpillOverOrder(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	staticLimits(cfg)
	cfg.Capacity.MaxQueueWait = regions.Duration(-1) // never wait
	r := newTestRouter(t, fx, cfg)
	var wg sync.WaitGroup
	defer wg.Wait() // after the release below (defers run last first)
	var held []*blocker
	defer func() {
		for _, b := range held {
			close(b.release)
		}
	}()
	for _, want := range []string{"home-1", "near-1", "far-1", "fb-1"} {
		b := newBlocker()
		fx.provider(want).complete = b.complete
		held = append(held, b)
		wg.Go(func() { r.Complete(context.Background(), req()) })
		waitFor(t, func() bool { return b.inflight() == 1 }, want+" to take the next call")
	}
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Exhausted || re.RetryAfter <= 0 {
		t.Fatalf("every backend full: err = %v, want Exhausted with a retry hint", err)
	}
}

// TestWaitsForCapacity: when every candidate is full, a call whose deadline
// allows it waits for a slot instead of failing, and is answered when one
// frees.
func TestWaitsForCapacity(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	cfg.Fallbacks = nil
	staticLimits(cfg)
	cfg.Capacity.Disabled = false
	cfg.Capacity.InitialLimit, cfg.Capacity.MaxLimit = 1, 1
	cfg.Capacity.MaxQueueWait = regions.Duration(time.Minute)
	r := newTestRouter(t, fx, cfg)
	b := newBlocker()
	fx.provider("home-1").complete = b.complete
	first := make(chan error, 1)
	go func() { _, err := r.Complete(context.Background(), req()); first <- err }()
	waitFor(t, func() bool { return b.inflight() == 1 }, "the first call to take the slot")
	second := make(chan error, 1)
	go func() { _, err := r.Complete(context.Background(), req()); second <- err }()
	waitFor(t, func() bool { return r.Backends()[0].Capacity.Queued == 1 }, "the second call to wait")
	close(b.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatalf("the waiting call: %v, want an answer once the slot freed", err)
	}
	if n := fx.provider("home-1").calls.Load(); n != 2 {
		t.Errorf("%d upstream calls, want 2", n)
	}
}

// TestPanicAttemptWhenEveryBreakerIsOpen: when every candidate's breaker is
// open, a call is still sent to the backend that reopens soonest, within the
// retry budget, instead of being refused in microseconds; once the budget
// is spent the call fails with UNAVAILABLE and a hint of the real reopen
// time.
func TestPanicAttemptWhenEveryBreakerIsOpen(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:2]
	cfg.Fallbacks = nil
	cfg.Breaker = regions.BreakerPolicy{ConsecutiveFailures: 1, OpenFor: regions.Duration(time.Minute)}
	cfg.Retry.MaxAttempts = 1
	cfg.Retry.BudgetRatio = 0.001
	cfg.Retry.BudgetMinPerSecond = 0.2 // 2 extra calls per 10 s window
	refused := func(context.Context) (*detourv1.CompleteResponse, error) { return nil, syscall.ECONNREFUSED }
	fx.provider("home-1").complete = refused
	fx.provider("near-1").complete = refused
	r := newClockedRouter(t, fx, cfg, clk)
	// Open both breakers (home-1 at t, near-1 a second later).
	for _, name := range []string{"home-1", "near-1"} {
		for range 10 {
			r.Complete(context.Background(), req())
			if st := backendState(r, name); st.Breaker == breaker.Open {
				break
			}
		}
		clk.Advance(time.Second)
	}
	for _, name := range []string{"home-1", "near-1"} {
		if st := backendState(r, name); st.Breaker != breaker.Open {
			t.Fatalf("%s breaker %v, want open", name, st.Breaker)
		}
	}
	fx.provider("home-1").complete = nil // back, but its breaker does not know
	before := fx.provider("home-1").calls.Load()
	resp, err := r.Complete(context.Background(), req())
	if err != nil || resp.GetServedBy().GetBackend() != "home-1" {
		t.Fatalf("every breaker open: %v, %v; want a panic attempt answered by home-1 (reopens first)", resp.GetServedBy().GetBackend(), err)
	}
	if fx.provider("home-1").calls.Load() != before+1 {
		t.Error("no attempt reached home-1")
	}
	// Spend the rest of the budget, then the call is refused with the time
	// home-1 reopens.
	var err2 error
	for range 5 {
		if _, err2 = r.Complete(context.Background(), req()); err2 != nil {
			break
		}
	}
	var re *Error
	if !errors.As(err2, &re) || re.Code != Unavailable {
		t.Fatalf("budget spent: err = %v, want Unavailable", err2)
	}
	if want := time.Minute - 2*time.Second; re.RetryAfter != want {
		t.Errorf("RetryAfter %v, want %v (when home-1's breaker admits a probe)", re.RetryAfter, want)
	}
}

func backendState(r *Router, name string) BackendState {
	for _, b := range r.Backends() {
		if b.Name == name {
			return b
		}
	}
	return BackendState{}
}

// TestHalfBusyRegionBesideAHealthyOne: a region whose backend answers half
// of its calls busy keeps only a probe share of the first attempts while the
// next region answers everything, so that retries stay few; a sole backend
// in the same state keeps everything.
func TestHalfBusyRegionBesideAHealthyOne(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:2]
	cfg.Fallbacks = nil
	var n int
	var mu sync.Mutex
	fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%2 == 0 {
			return nil, httpErr{code: 503}
		}
		return &detourv1.CompleteResponse{}, nil
	}
	r := newTestRouter(t, fx, cfg)
	const calls = 2000
	for range calls {
		if _, err := r.Complete(context.Background(), req()); err != nil {
			t.Fatal(err)
		}
	}
	home, near := fx.provider("home-1").calls.Load(), fx.provider("near-1").calls.Load()
	// Once home's busy share is known, it keeps probeShare of the first
	// attempts; near gets the rest plus the retries of home's busy answers.
	if share := float64(home) / calls; share > 3*probeShare {
		t.Errorf("home-1 got %d of %d first attempts (%.0f%%), want about %.0f%%", home, calls, 100*share, 100*probeShare)
	}
	if home == 0 {
		t.Error("home-1 got no call: nothing would see it recover")
	}
	if amp := float64(home+near) / calls; amp > 1.1 {
		t.Errorf("%.2f upstream calls per call, want at most 1.1", amp)
	}
	if diff := cmp.Diff(int64(0), fx.provider("far-1").calls.Load()); diff != "" {
		t.Errorf("far-1 (not configured) calls (-want +got):\n%s", diff)
	}
}

// TestLimitsLearnedByOneReplicaSeedTheOthers: with Redis, a replica that
// meets a backend starts from the limit another replica learned for it,
// not from the initial limit.
func TestLimitsLearnedByOneReplicaSeedTheOthers(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	open := func() *fleet.Store {
		s, err := fleet.Open(fleet.Config{Addr: addr, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	cfg := testConfig()
	replica := func() *Router {
		r, err := New(&regions.Snapshot{Config: cfg}, Options{Region: "home", NewProvider: (&fixture{}).newProvider,
			Logger: quiet, Fleet: open(), FleetOptions: []fleet.Option{fleet.WithEvery(20 * time.Millisecond)}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	a := replica()
	a.tab.Load().byName["home-1"].lim.Seed(40) // as if a had learned it
	b := replica()
	waitFor(t, func() bool { return backendState(b, "home-1").Capacity.Limit == 40 }, "b to start home-1 at a's limit")
	if got := backendState(b, "near-1").Capacity.Limit; got != capacity.DefaultInitial {
		t.Errorf("near-1 on b: limit %d, want the initial %d (nobody learned it)", got, capacity.DefaultInitial)
	}
}

// TestKeepShare: a region keeps its answered share of first attempts while
// the others are partly busy too, and only a probe share while a later one
// is healthy and it is clearly not.
func TestKeepShare(t *testing.T) {
	lv := func(h ...float64) []level {
		out := make([]level, len(h))
		for i, x := range h {
			out[i] = level{health: x, n: 1, weight: 1}
		}
		return out
	}
	tests := []struct {
		name   string
		levels []level
		i      int
		spill  float64
		want   float64
	}{
		{"healthy home", lv(1, 1), 0, 1, 1},
		{"all half busy", lv(0.5, 0.5), 0, 1, 0.5},
		{"spill factor", lv(0.5, 0.45), 0, 1.4, 0.7},
		{"home half busy, healthy neighbour", lv(0.5, 1), 0, 1, probeShare},
		{"home half busy, neighbour 20% busy", lv(0.5, 0.8), 0, 1, 0.5},
		{"home 10% busy, neighbour 4% busy", lv(0.9, 0.96), 0, 1, 0.9},
		{"home 20% busy, neighbour healthy", lv(0.8, 1), 0, 1, probeShare},
		{"the healthier one is before, not after", lv(1, 0.5), 1, 1, 0.5},
		{"a clearly healthier third", lv(0.5, 0.5, 1), 0, 1, probeShare},
		{"dead home", lv(0, 1), 0, 1, 0},
	}
	for _, tt := range tests {
		if got := keep(tt.levels, tt.i, tt.spill); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: keep = %v, want %v", tt.name, got, tt.want)
		}
	}
}
