package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
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

// redisReplica runs one instance with /metrics on the given Redis, logging
// JSON into logs, and returns its metrics address and an Admin client.
func redisReplica(t *testing.T, redisAddr string, logs *testkit.Buffer) (net.Addr, detourv1.AdminClient) {
	t.Helper()
	f := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", f)}}}}
	m := &Main{Listen: "127.0.0.1:0", Region: "home", Grace: 5 * time.Second, config: cfg,
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
		Observe: ObserveOptions{MetricsAddr: "127.0.0.1:0"}}
	if redisAddr != "" {
		m.Redis = RedisOptions{Config: fleet.Config{Addr: redisAddr, KeyPrefix: fleettest.Prefix(t)}}
	}
	addr, maddr := runMain(t, m)
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return maddr, detourv1.NewAdminClient(conn)
}

func redisUp(t *testing.T, maddr net.Addr) (float64, bool) {
	return value(scrape(t, maddr), "detour_fleet_redis_up", nil)
}

// TestRedisOutageIsReported: an operator is told when the shared Redis goes
// and comes back: one warning each way in the log (not one per call),
// detour_fleet_redis_up and the errors counter in /metrics, and the shared
// state in Admin.Status.
func TestRedisOutageIsReported(t *testing.T) {
	srv := fleettest.Start(t)
	var logs testkit.Buffer
	maddr, admin := redisReplica(t, srv.Addr, &logs)
	eventually(t, 5*time.Second, func() bool { v, ok := redisUp(t, maddr); return ok && v == 1 }, "detour_fleet_redis_up 1")
	if !strings.Contains(logs.String(), `"level":"INFO","msg":"shared state in redis","addr":"`+srv.Addr+`"`) {
		t.Errorf("no start-up line for a Redis that answers:\n%s", logs.String())
	}
	st, err := admin.Status(callCtx(t), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s := st.GetSharedState(); s.GetAddr() != srv.Addr || !s.GetUp() || !s.GetChecked() || s.GetSince() == nil {
		t.Errorf("Status shared_state with Redis up = %v", s)
	}

	srv.Kill()
	eventually(t, 10*time.Second, func() bool { v, _ := redisUp(t, maddr); return v == 0 }, "detour_fleet_redis_up 0 after Redis was killed")
	errs, _ := value(scrape(t, maddr), "detour_fleet_redis_errors_total", nil)
	eventually(t, 10*time.Second, func() bool {
		n, _ := value(scrape(t, maddr), "detour_fleet_redis_errors_total", nil)
		return n >= errs+2
	}, "two more failed checks")
	if n := strings.Count(logs.String(), `"level":"WARN","msg":"redis unreachable: cache, cooldowns and limits are local to this replica until it answers"`); n != 1 {
		t.Errorf("%d warnings for one outage, want 1:\n%s", n, logs.String())
	}
	st, err = admin.Status(callCtx(t), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s := st.GetSharedState(); s.GetUp() || s.GetErrors() == 0 || s.GetLastError() == "" {
		t.Errorf("Status shared_state with Redis down = %v", s)
	}

	srv.Restart()
	eventually(t, 10*time.Second, func() bool { v, _ := redisUp(t, maddr); return v == 1 }, "detour_fleet_redis_up 1 after Redis came back")
	if n := strings.Count(logs.String(), `"level":"WARN","msg":"redis reachable again: cache, cooldowns and limits are shared again"`); n != 1 {
		t.Errorf("%d lines for one recovery, want 1:\n%s", n, logs.String())
	}
}

// TestRedisAddrWhereNothingListens: a mistyped --redis-addr is a warning at
// start, never "shared state in redis"; an instance without Redis has no
// Redis series and no shared_state.
func TestRedisAddrWhereNothingListens(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nothing := lis.Addr().String()
	lis.Close()
	var logs testkit.Buffer
	maddr, admin := redisReplica(t, nothing, &logs)
	eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), `"msg":"redis unreachable`) }, "the warning")
	if strings.Contains(logs.String(), "shared state in redis") {
		t.Errorf("logged shared state in redis for an address where nothing listens:\n%s", logs.String())
	}
	if v, ok := redisUp(t, maddr); !ok || v != 0 {
		t.Errorf("detour_fleet_redis_up = %v (present %v), want 0", v, ok)
	}
	st, err := admin.Status(callCtx(t), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s := st.GetSharedState(); s.GetUp() || !strings.Contains(s.GetLastError(), "connection refused") {
		t.Errorf("Status shared_state = %v, want down with connection refused", s)
	}

	var none testkit.Buffer
	maddr, admin = redisReplica(t, "", &none)
	if _, ok := redisUp(t, maddr); ok {
		t.Error("detour_fleet_redis_up exists without Redis")
	}
	st, err = admin.Status(callCtx(t), &detourv1.StatusRequest{})
	if err != nil || st.GetSharedState() != nil {
		t.Errorf("Status without Redis: shared_state %v, err %v; want none", st.GetSharedState(), err)
	}
}
