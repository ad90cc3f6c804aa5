package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func deterministic(prompt string) *detourv1.CompleteRequest {
	r := userReq(prompt)
	zero := 0.0
	r.Temperature = &zero
	return r
}

// TestCoalescingThroughDetour: 100 identical concurrent calls make one
// upstream call, counted by the backend itself.
func TestCoalescingThroughDetour(t *testing.T) {
	f := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{Latency: 300 * time.Millisecond}}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", f)}}}}
	c := startDetour(t, cfg, "a")
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sources := make(chan detourv1.Source, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Complete(callCtx(t), deterministic("classify this ticket"))
			errs <- err
			sources <- resp.GetSource()
		}()
	}
	wg.Wait()
	close(errs)
	close(sources)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Stats().Total; got != 1 {
		t.Errorf("backend received %d requests for %d identical concurrent calls, want 1", got, n)
	}
	// A later identical call is a cache hit.
	resp, err := c.Complete(callCtx(t), deterministic("classify this ticket"))
	if err != nil || resp.GetSource() != detourv1.Source_SOURCE_CACHE || resp.GetAttempts() != 0 {
		t.Errorf("repeat: source %v attempts %d err %v, want CACHE with 0 attempts", resp.GetSource(), resp.GetAttempts(), err)
	}
}

// startReplica runs one detour instance on the shared Redis.
func startReplica(t *testing.T, cfg *regions.Config, redisAddr, prefix string) detourv1.RouterClient {
	t.Helper()
	m := &Main{Listen: "127.0.0.1:0", Region: "home", Grace: 5 * time.Second, config: cfg,
		Redis: RedisOptions{Config: fleet.Config{Addr: redisAddr, KeyPrefix: prefix, Timeout: 50 * time.Millisecond}}}
	addr, _ := runMain(t, m)
	return dial(t, addr.String())
}

// TestReplicasShareCooldown: one replica's breaker opening on a busy backend
// keeps the other replica away from it too.
func TestReplicasShareCooldown(t *testing.T) {
	redis := fleettest.Addr(t)
	prefix := fleettest.Prefix(t)
	home := startFake(t, fakellm.Config{Region: "home", Name: "home-1", Settings: fakellm.Settings{BusyRate: 1}}, false)
	away := startFake(t, fakellm.Config{Region: "away", Name: "away-1"}, false)
	cfg := func() *regions.Config {
		return &regions.Config{
			Regions: []regions.Region{
				{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", home)}},
				{Name: "away", Priority: 1, Backends: []regions.Backend{openaiBackend("away-1", away)}},
			},
			Breaker: regions.BreakerPolicy{ConsecutiveBusy: 3, OpenFor: regions.Duration(time.Minute)},
		}
	}
	a := startReplica(t, cfg(), redis, prefix)
	b := startReplica(t, cfg(), redis, prefix)
	for i := range 5 {
		if _, err := a.Complete(callCtx(t), userReq(fmt.Sprint("a ", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := home.Stats().Busy; got != 3 {
		t.Fatalf("home-1 answered busy %d times to replica a, want 3 before its breaker opened", got)
	}
	// Replica b learns of the cooldown through Redis and never calls home-1.
	eventually(t, 5*time.Second, func() bool {
		before := home.Stats().Total
		resp, err := b.Complete(callCtx(t), userReq("b probe"))
		return err == nil && resp.GetAttempts() == 1 && home.Stats().Total == before
	}, "replica b skips home-1")
	before := home.Stats().Total
	for i := range 10 {
		resp, err := b.Complete(callCtx(t), userReq(fmt.Sprint("b ", i)))
		if err != nil || resp.GetServedBy().GetBackend() != "away-1" {
			t.Fatalf("b call %d: %v served by %s, want away-1", i, err, resp.GetServedBy().GetBackend())
		}
	}
	if got := home.Stats().Total - before; got != 0 {
		t.Errorf("replica b sent %d calls to the cooling-down home-1, want 0", got)
	}
}

// TestRedisKilledCausesNoErrors: Redis dies under load; calls keep working
// on local state.
func TestRedisKilledCausesNoErrors(t *testing.T) {
	srv := fleettest.Start(t)
	f := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "home", Backends: []regions.Backend{
		{Name: "home-1", Endpoint: "http://" + f.HTTPAddr() + "/v1", QPS: 10000}}}}}
	c := startReplica(t, cfg, srv.Addr, fleettest.Prefix(t))
	for i := range 60 {
		if i == 20 {
			srv.Kill()
		}
		if i == 40 {
			srv.Restart()
		}
		// Half cacheable (Redis tier), half live (fleet limiter).
		req := userReq(fmt.Sprint("live ", i))
		if i%2 == 0 {
			req = deterministic(fmt.Sprint("cached ", i%4))
		}
		if _, err := c.Complete(callCtx(t), req); err != nil {
			t.Fatalf("call %d (Redis killed at 20, back at 40): %v", i, err)
		}
	}
}
