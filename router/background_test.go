package router

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// oneBackend is testConfig reduced to home-1 with a static limit of n slots
// and the fallback fb-1.
func oneBackend(n int) *regions.Config {
	cfg := testConfig()
	cfg.Regions = cfg.Regions[:1]
	staticLimits(cfg)
	cfg.Regions[0].Backends[0].MaxConcurrency = n
	cfg.Capacity.MaxQueueWait = regions.Duration(time.Minute)
	return cfg
}

func bgCtx(reserve float64) context.Context {
	return WithBackground(context.Background(), Background{Reserve: reserve})
}

// TestBackgroundUsesOnlySpareRoom: background calls take a backend's slots
// only beyond the reserve kept for interactive calls; the next one is
// Deferred at once with a retry hint, while an interactive call still gets
// the reserved slot without waiting.
func TestBackgroundUsesOnlySpareRoom(t *testing.T) {
	fx := &fixture{}
	r := newTestRouter(t, fx, oneBackend(4))
	b := newBlocker()
	fx.provider("home-1").complete = b.complete
	bg := Background{Reserve: 0.25} // keeps one slot of four
	if got := r.Spare("m", bg); got != 3 {
		t.Fatalf("Spare = %d on an idle backend of 4 slots with 1 reserved, want 3", got)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(b.release)
	for i := range 3 {
		wg.Go(func() { r.Complete(bgCtx(0.25), req()) })
		waitFor(t, func() bool { return b.inflight() == i+1 }, "a background call to take a spare slot")
	}
	if got := r.Spare("m", bg); got != 0 {
		t.Errorf("Spare = %d with every spare slot taken, want 0", got)
	}
	_, err := r.Complete(bgCtx(0.25), req())
	var re *Error
	if !errors.As(err, &re) || re.Code != Deferred || re.RetryAfter <= 0 {
		t.Fatalf("background call beyond the spare room: err = %v, want Deferred with a retry hint", err)
	}
	if n := b.inflight(); n != 3 {
		t.Errorf("%d upstream calls, want 3: a deferred background call makes none", n)
	}
	fb := fx.provider("fb-1").calls.Load()
	if fb != 0 {
		t.Errorf("the fallback took %d background calls, want none", fb)
	}
	done := make(chan error, 1)
	fx.provider("home-1").complete = nil // the interactive call is answered at once
	go func() { _, err := r.Complete(context.Background(), req()); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("interactive call: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the interactive call waited behind background calls")
	}
}

// TestInteractivePreemptsBackground: an interactive call that finds no room
// takes the slot of a background call in flight, which is cancelled and
// fails Deferred; the interactive call does not wait for the background
// call's upstream answer.
func TestInteractivePreemptsBackground(t *testing.T) {
	fx := &fixture{}
	r := newTestRouter(t, fx, oneBackend(2))
	slow := newBlocker()
	defer close(slow.release)
	var calls sync.Mutex
	n := 0
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		calls.Lock()
		n++
		first := n <= 2
		calls.Unlock()
		if first { // the background call, then the first interactive one
			return slow.complete(ctx)
		}
		return &detourv1.CompleteResponse{Content: "interactive"}, nil
	}
	bgDone := make(chan error, 1)
	go func() { _, err := r.Complete(bgCtx(0.01), req()); bgDone <- err }()
	waitFor(t, func() bool { return slow.inflight() == 1 }, "the background call to start")
	first := make(chan error, 1)
	go func() { _, err := r.Complete(context.Background(), req()); first <- err }()
	waitFor(t, func() bool { return slow.inflight() == 2 }, "an interactive call to take the last slot")
	resp, err := r.Complete(context.Background(), req())
	if err != nil || resp.GetContent() != "interactive" {
		t.Fatalf("interactive call with every slot taken, one by a background call: %v, %v; want an answer", resp, err)
	}
	err = <-bgDone
	var re *Error
	if !errors.As(err, &re) || re.Code != Deferred {
		t.Errorf("preempted background call: err = %v, want Deferred", err)
	}
	if st := r.Backends()[0]; st.Breaker != breaker.Closed {
		t.Errorf("breaker %s after a preemption, want closed: a preempted attempt is not the backend's fault", st.Breaker)
	}
	slow.release <- struct{}{}
	if err := <-first; err != nil {
		t.Errorf("first interactive call: %v", err)
	}
}

// TestBackgroundBusyIsNotRetried: a busy answer ends a background call at
// once (the job is rescheduled by its owner), without a retry elsewhere or
// a fallback, and it is not charged to the tenant's quota.
func TestBackgroundBusyIsNotRetried(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Limits.TenantQPS = 0.001 // one call, then over quota for a long time
	r := newTestRouter(t, fx, cfg)
	fx.provider("home-1").complete = busy
	ctx := auth.WithTenant(bgCtx(0), "t1")
	for range 2 {
		_, err := r.Complete(ctx, req())
		var re *Error
		if !errors.As(err, &re) || re.Code != Unavailable {
			t.Fatalf("background call to a busy backend: err = %v, want Unavailable", err)
		}
	}
	got := map[string]int64{}
	for _, name := range []string{"home-1", "near-1", "far-1", "fb-1"} {
		got[name] = fx.provider(name).calls.Load()
	}
	if got["home-1"] != 2 || got["near-1"]+got["far-1"]+got["fb-1"] != 0 {
		t.Errorf("upstream calls %v, want home-1 once per background call and nothing else", got)
	}
}
