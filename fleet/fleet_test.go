package fleet

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock that only moves when told to.

type clock = testkit.Clock

func newClock() *clock { return testkit.NewClock(time.Now()) }

// eventually waits until cond holds, failing t after a deadline. It polls:
// cond reads state another goroutine changes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Until(t, 5*time.Second, what, cond)
}

// openStore opens a Store on addr under prefix and closes it at the end.
func openStore(t *testing.T, addr, prefix string, mod ...func(*Config)) *Store {
	t.Helper()
	cfg := Config{Addr: addr, KeyPrefix: prefix, Timeout: 50 * time.Millisecond, Backoff: 100 * time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ping(ctx context.Context, r redis.Cmdable) error { return r.Ping(ctx).Err() }

func TestOpen(t *testing.T) {
	t.Setenv("FLEET_TEST_PASSWORD", "from-env")
	tests := []struct {
		name    string
		cfg     Config
		wantNil bool
		wantErr bool
	}{
		{name: "no addr means no store", cfg: Config{}, wantNil: true},
		{name: "addr", cfg: Config{Addr: "127.0.0.1:6379"}},
		{name: "bad addr", cfg: Config{Addr: "localhost"}, wantErr: true},
		{name: "password env", cfg: Config{Addr: "127.0.0.1:6379", PasswordEnv: "FLEET_TEST_PASSWORD"}},
		{name: "password env unset", cfg: Config{Addr: "127.0.0.1:6379", PasswordEnv: "FLEET_TEST_UNSET"}, wantErr: true},
		{name: "password file missing", cfg: Config{Addr: "127.0.0.1:6379", PasswordFile: "/nonexistent"}, wantErr: true},
		{name: "tls system roots", cfg: Config{Addr: "127.0.0.1:6379", TLS: &TLS{}}},
		{name: "tls ca missing", cfg: Config{Addr: "127.0.0.1:6379", TLS: &TLS{CAFile: "/nonexistent"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Open: err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer s.Close()
			if got := s == nil; got != tt.wantNil {
				t.Errorf("Open: nil store = %v, want %v", got, tt.wantNil)
			}
		})
	}
}

func TestNilStore(t *testing.T) {
	var s *Store
	if s.Available() {
		t.Error("nil Store is available")
	}
	if err := s.Do(context.Background(), 0, ping); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Do on nil Store: %v, want ErrUnavailable", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close on nil Store: %v", err)
	}
}

func TestStorePassword(t *testing.T) {
	srv := fleettest.Start(t, "--requirepass", "s3cret")
	ctx := context.Background()
	wrong := openStore(t, srv.Addr, "p:", func(c *Config) { c.Password = "wrong" })
	if err := wrong.Do(ctx, 0, ping); err == nil {
		t.Error("Do with a wrong password succeeded")
	}
	right := openStore(t, srv.Addr, "p:", func(c *Config) { c.Password = "s3cret" })
	if err := right.Do(ctx, 0, ping); err != nil {
		t.Errorf("Do with the password: %v", err)
	}
}

// A Redis that goes away costs one timeout, then nothing for the backoff
// period; one probe after it finds Redis back.
func TestStoreBackoff(t *testing.T) {
	srv := fleettest.Start(t)
	s := openStore(t, srv.Addr, fleettest.Prefix(t))
	clk := newClock()
	s.now = clk.Now
	ctx := context.Background()

	if err := s.Do(ctx, 0, ping); err != nil {
		t.Fatalf("Do with Redis up: %v", err)
	}
	srv.Kill()
	if err := s.Do(ctx, 0, ping); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("first Do with Redis down: %v, want a Redis error", err)
	}
	if s.Available() {
		t.Error("Available right after a failure")
	}
	calls := 0
	err := s.Do(ctx, 0, func(ctx context.Context, r redis.Cmdable) error { calls++; return ping(ctx, r) })
	if !errors.Is(err, ErrUnavailable) || calls != 0 {
		t.Fatalf("Do during backoff: err %v after %d calls, want ErrUnavailable without calling", err, calls)
	}

	srv.Restart()
	clk.Advance(s.cfg.backoff())
	if !s.Available() {
		t.Error("not Available after the backoff")
	}
	if err := s.Do(ctx, 0, ping); err != nil {
		t.Fatalf("probe with Redis back: %v", err)
	}
	if got := s.Recoveries(); got != 1 {
		t.Errorf("Recoveries = %d, want 1", got)
	}
}

// While one caller probes after the backoff, the others stay local.
func TestStoreSingleProbe(t *testing.T) {
	srv := fleettest.Start(t)
	s := openStore(t, srv.Addr, fleettest.Prefix(t))
	clk := newClock()
	s.now = clk.Now
	ctx := context.Background()
	s.downUntil.Store(clk.Now().UnixNano()) // backoff just ended

	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.Do(ctx, time.Minute, func(ctx context.Context, r redis.Cmdable) error {
			close(entered)
			<-release
			return ping(ctx, r)
		})
	}()
	<-entered
	if err := s.Do(ctx, 0, ping); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Do during a probe: %v, want ErrUnavailable", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if err := s.Do(ctx, 0, ping); err != nil {
		t.Errorf("Do after a good probe: %v", err)
	}
}

// A caller's own cancellation is not Redis's fault.
func TestStoreCallerCancel(t *testing.T) {
	s := openStore(t, fleettest.Addr(t), fleettest.Prefix(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Do(ctx, 0, ping); err == nil {
		t.Fatal("Do with a cancelled ctx succeeded")
	}
	if !s.Available() {
		t.Error("a cancelled caller put Redis in backoff")
	}
}

// A Redis that stops answering (a paused process, a long DEBUG SLEEP) costs
// each caller at most the timeout, and only the first one.
func TestStoreSlowRedis(t *testing.T) {
	tests := []struct {
		name  string
		stall func(t *testing.T, srv *fleettest.Server) (resume func())
	}{
		{name: "SIGSTOP", stall: func(t *testing.T, srv *fleettest.Server) func() {
			srv.Pause()
			return srv.Resume
		}},
		{name: "DEBUG SLEEP", stall: func(t *testing.T, srv *fleettest.Server) func() {
			r := redis.NewClient(&redis.Options{Addr: srv.Addr, Protocol: 2, DisableIdentity: true})
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.Do(context.Background(), "DEBUG", "SLEEP", "1")
			}()
			// Wait until the server is inside the sleep: a PING with a
			// short deadline stops being answered.
			eventually(t, "DEBUG SLEEP to block the server", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				defer cancel()
				p := redis.NewClient(&redis.Options{Addr: srv.Addr, Protocol: 2, DisableIdentity: true, ContextTimeoutEnabled: true, MaxRetries: -1})
				defer p.Close()
				return p.Ping(ctx).Err() != nil
			})
			return func() { <-done; r.Close() }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fleettest.Start(t)
			const timeout = 50 * time.Millisecond
			s := openStore(t, srv.Addr, fleettest.Prefix(t), func(c *Config) { c.Timeout = timeout; c.Backoff = time.Hour })
			ctx := context.Background()
			if err := s.Do(ctx, 0, ping); err != nil {
				t.Fatal(err)
			}
			resume := tt.stall(t, srv)
			defer resume()

			start := time.Now()
			err := s.Do(ctx, 0, ping)
			// A bound, not a measurement: generous for a loaded machine.
			if took := time.Since(start); err == nil || took > timeout+time.Second {
				t.Errorf("Do against a stalled Redis: err %v after %v, want an error within %v", err, took, timeout)
			}
			start = time.Now()
			err = s.Do(ctx, 0, ping)
			if took := time.Since(start); !errors.Is(err, ErrUnavailable) || took > 100*time.Millisecond {
				t.Errorf("second Do: err %v after %v, want ErrUnavailable at once", err, took)
			}
		})
	}
}

func TestCooldownsLocal(t *testing.T) {
	clk := newClock()
	c := NewCooldowns(nil, WithClock(clk.Now))
	defer c.Close()
	until := clk.Now().Add(5 * time.Second)

	c.Publish("eu-1", until)
	c.Publish("eu-1", until.Add(-time.Second)) // earlier: ignored
	c.Publish("eu-2", clk.Now())               // already over: ignored
	got := []time.Time{c.OpenUntil("eu-1"), c.OpenUntil("eu-2"), c.OpenUntil("other")}
	if diff := cmp.Diff(got, []time.Time{until, {}, {}}); diff != "" {
		t.Errorf("OpenUntil (-got +want):\n%s", diff)
	}
	clk.Advance(5 * time.Second)
	if got := c.OpenUntil("eu-1"); !got.IsZero() {
		t.Errorf("OpenUntil after the cooldown = %v, want zero", got)
	}
}

// Two replicas: what one publishes, the other sees; a replica that starts
// later catches up from the set.
func TestCooldownsShared(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	a := NewCooldowns(openStore(t, addr, prefix))
	defer a.Close()
	b := NewCooldowns(openStore(t, addr, prefix))
	defer b.Close()

	until := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	a.Publish("deepseek-eu", until)
	eventually(t, "replica b to see the cooldown", func() bool { return b.OpenUntil("deepseek-eu").Equal(until) })

	later := NewCooldowns(openStore(t, addr, prefix))
	defer later.Close()
	eventually(t, "a late replica to resync", func() bool { return later.OpenUntil("deepseek-eu").Equal(until) })

	// Another fleet (prefix) sees nothing.
	other := NewCooldowns(openStore(t, addr, fleettest.Prefix(t)))
	defer other.Close()
	b.Publish("deepseek-us", until)
	eventually(t, "replica a to see b's cooldown", func() bool { return a.OpenUntil("deepseek-us").Equal(until) })
	if got := other.OpenUntil("deepseek-eu"); !got.IsZero() {
		t.Errorf("another fleet sees OpenUntil = %v", got)
	}
}

// Redis killed: publishing keeps working locally, and once Redis is back
// the cooldown reaches the other replica.
func TestCooldownsRedisKilled(t *testing.T) {
	srv := fleettest.Start(t)
	prefix := fleettest.Prefix(t)
	a := NewCooldowns(openStore(t, srv.Addr, prefix))
	defer a.Close()
	b := NewCooldowns(openStore(t, srv.Addr, prefix))
	defer b.Close()
	first := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	a.Publish("x", first)
	eventually(t, "b to see x", func() bool { return b.OpenUntil("x").Equal(first) })

	srv.Kill()
	until := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	a.Publish("y", until)
	if got := a.OpenUntil("y"); !got.Equal(until) {
		t.Errorf("a.OpenUntil(y) with Redis down = %v, want %v", got, until)
	}
	if got := b.OpenUntil("x"); !got.Equal(first) {
		t.Errorf("b forgot x while Redis was down: %v", got)
	}
	srv.Restart() // empty: x is gone from Redis, y is still pending in a
	eventually(t, "b to see y after Redis came back", func() bool { return b.OpenUntil("y").Equal(until) })
}

// The fleet-wide qps holds across two replicas sharing one Redis: within
// 10% under a steady 2× overload, and never above it when callers flood.
func TestLimiterFleetQPS(t *testing.T) {
	const qps = 200.0
	tests := []struct {
		name     string
		run      time.Duration
		interval time.Duration // between one caller's calls; 0 floods
		lower    bool          // whether admitting too few fails
	}{
		// Four callers offer 2×qps between them, as in the busy-provider
		// scenario.
		{name: "2x overload", run: 2 * time.Second, interval: time.Duration(float64(time.Second) * 4 / (2 * qps)), lower: true},
		// Callers that retry at once only starve the machine: fewer calls
		// may pass, never more.
		{name: "flood", run: time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
			limiters := []*Limiter{
				NewLimiter(openStore(t, addr, prefix, func(c *Config) { c.Timeout = time.Second }), 2),
				NewLimiter(openStore(t, addr, prefix, func(c *Config) { c.Timeout = time.Second }), 2),
			}
			for _, l := range limiters {
				defer l.Close()
			}
			ctx := context.Background()
			var admitted, denied atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			stop := start.Add(tt.run)
			for i := range 4 {
				wg.Add(1)
				go func(l *Limiter) {
					defer wg.Done()
					var tick <-chan time.Time
					if tt.interval > 0 {
						tk := time.NewTicker(tt.interval)
						defer tk.Stop()
						tick = tk.C
					}
					for {
						if tick != nil {
							<-tick
						}
						if !time.Now().Before(stop) {
							return
						}
						if ok, wait := l.Allow(ctx, "deepseek-eu", qps); ok {
							admitted.Add(1)
						} else if wait <= 0 {
							t.Errorf("denied without a wait hint")
							return
						} else {
							denied.Add(1)
						}
					}
				}(limiters[i%2])
			}
			wg.Wait()
			elapsed := time.Since(start)
			// GCRA admits the burst (qps/10) at once, then qps per second.
			want := qps*elapsed.Seconds() + qps/10
			got := float64(admitted.Load())
			t.Logf("admitted %v in %v (%.0f/s), denied %d; want %.0f", got, elapsed, got/elapsed.Seconds(), denied.Load(), want)
			if got > 1.1*want || (tt.lower && got < 0.9*want) {
				t.Errorf("admitted %v calls in %v across two replicas, want %.0f ± 10%%", got, elapsed, want)
			}
			for _, l := range limiters {
				if !l.store.Available() {
					t.Error("Redis fell back to local during the run")
				}
			}
		})
	}
}

// Without Redis each replica admits its share of the qps.
func TestLimiterLocalShare(t *testing.T) {
	tests := []struct {
		name     string
		qps      float64
		replicas int
		want     int // admitted over one second in 10ms steps
	}{
		{name: "one replica", qps: 100, replicas: 1, want: 10 + 100},
		{name: "share of four", qps: 100, replicas: 4, want: 2 + 25},
		{name: "no limit", qps: 0, replicas: 4, want: 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			l := NewLimiter(nil, tt.replicas, WithClock(clk.Now))
			defer l.Close()
			got := 0
			for i := 0; i <= 100; i++ {
				for {
					ok, wait := l.Allow(context.Background(), "b", tt.qps)
					if !ok {
						if wait <= 0 {
							t.Fatalf("denied without a wait hint")
						}
						break
					}
					got++
					if tt.qps == 0 {
						break
					}
				}
				clk.Advance(10 * time.Millisecond)
			}
			if got < tt.want-1 || got > tt.want+1 {
				t.Errorf("admitted %d, want %d ± 1", got, tt.want)
			}
		})
	}
}

// Redis killed mid-run: Allow keeps answering, locally, with no error and
// no long waits; when Redis is back the limiter books calls there again.
func TestLimiterRedisKilled(t *testing.T) {
	srv := fleettest.Start(t)
	s := openStore(t, srv.Addr, fleettest.Prefix(t))
	clk := newClock()
	s.now = clk.Now
	l := NewLimiter(s, 2)
	defer l.Close()
	ctx := context.Background()
	if ok, _ := l.Allow(ctx, "b", 1000); !ok {
		t.Fatal("first call denied")
	}
	srv.Kill()
	start := time.Now()
	admitted := 0
	// Leased calls are spent first; the next lease request finds Redis gone.
	for i := 0; s.Available() && i < 100000; i++ {
		if ok, _ := l.Allow(ctx, "b", 1000); ok {
			admitted++
		}
	}
	if s.Available() {
		t.Fatal("the Store never noticed that Redis was killed")
	}
	opsDown := s.Ops()
	for range 20 {
		if ok, _ := l.Allow(ctx, "b", 1000); ok {
			admitted++
		}
	}
	if admitted == 0 {
		t.Error("no call admitted with Redis down")
	}
	if ops := s.Ops() - opsDown; ops != 0 {
		t.Errorf("%d Redis operations during the backoff, want 0", ops)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("calls with Redis down took %v", took)
	}

	srv.Restart()
	clk.Advance(s.cfg.backoff())
	l.Allow(ctx, "b", 1000)
	waitIdle(t, l)
	if !s.Available() || s.Recoveries() != 1 {
		t.Errorf("Redis not back in use: available %v, recoveries %d", s.Available(), s.Recoveries())
	}
}

// waitIdle waits until l has no lease request in flight.
func waitIdle(t *testing.T, l *Limiter) {
	t.Helper()
	eventually(t, "lease requests to end", func() bool {
		idle := true
		l.buckets.Range(func(_, v any) bool {
			b := v.(*bucket)
			b.mu.Lock()
			defer b.mu.Unlock()
			idle = idle && b.leasing == nil
			return true
		})
		return idle
	})
}

// A paused Redis costs a call at most Config.Timeout: it is then decided
// locally while the lease request waits longer before giving up on Redis.
func TestLimiterSlowRedis(t *testing.T) {
	srv := fleettest.Start(t)
	const timeout = 20 * time.Millisecond
	s := openStore(t, srv.Addr, fleettest.Prefix(t), func(c *Config) { c.Timeout = timeout; c.Backoff = time.Hour })
	l := NewLimiter(s, 2)
	defer l.Close()
	ctx := context.Background()
	l.Allow(ctx, "b", 1000)
	waitIdle(t, l)
	srv.Pause()
	defer srv.Resume()
	var slowest time.Duration
	admitted := 0
	for range 200 {
		start := time.Now()
		if ok, _ := l.Allow(ctx, "b", 1000); ok {
			admitted++
		}
		slowest = max(slowest, time.Since(start))
	}
	// A bound, not a measurement: generous for a loaded machine.
	if slowest > timeout+time.Second {
		t.Errorf("slowest Allow against a paused Redis took %v, want about %v at most", slowest, timeout)
	}
	if admitted == 0 {
		t.Error("no call admitted with Redis paused")
	}
	waitIdle(t, l) // the lease request gives up after 10×timeout
	if s.Available() {
		t.Error("a paused Redis was not put in backoff")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "zero", cfg: Config{}},
		{name: "full", cfg: Config{Addr: "redis:6379", PasswordEnv: "P", TLS: &TLS{CertFile: "c", KeyFile: "k"}, Timeout: time.Millisecond, Replicas: 3}},
		{name: "bad addr", cfg: Config{Addr: "redis"}, wantErr: true},
		{name: "two passwords", cfg: Config{Addr: "redis:6379", PasswordEnv: "P", PasswordFile: "f"}, wantErr: true},
		{name: "negative", cfg: Config{Timeout: -1}, wantErr: true},
		{name: "cert without key", cfg: Config{TLS: &TLS{CertFile: "c"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

// TLS and a password together, against a Redis that accepts only TLS.
func TestStoreTLS(t *testing.T) {
	srv, ca := fleettest.StartTLS(t, "--requirepass", "s3cret")
	ctx := context.Background()
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr bool
	}{
		{name: "tls and password", mod: func(c *Config) { c.TLS = &TLS{CAFile: ca}; c.Password = "s3cret" }},
		{name: "plaintext", mod: func(c *Config) { c.Password = "s3cret" }, wantErr: true},
		{name: "unknown CA", mod: func(c *Config) { c.TLS = &TLS{}; c.Password = "s3cret" }, wantErr: true},
		{name: "wrong server name", mod: func(c *Config) { c.TLS = &TLS{CAFile: ca, ServerName: "redis.example"}; c.Password = "s3cret" }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, srv.Addr, fleettest.Prefix(t), func(c *Config) { c.Timeout = time.Second; tt.mod(c) })
			if err := s.Do(ctx, 0, ping); (err != nil) != tt.wantErr {
				t.Errorf("Do: %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

// TestCapacitiesShareLearnedLimits: the limits one replica learned reach
// the others (the median of the others' for each backend, never its own),
// and stop counting once their replica stops writing them.
func TestCapacitiesShareLearnedLimits(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	const every = 50 * time.Millisecond
	var mu sync.Mutex
	learned := map[string]map[string]float64{
		"a": {"deepseek-eu": 40},
		"b": {"deepseek-eu": 60, "deepseek-us": 10},
	}
	source := func(name string) func() map[string]float64 {
		return func() map[string]float64 {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(learned[name])
		}
	}
	a := NewCapacities(openStore(t, addr, prefix), source("a"), nil, WithEvery(every))
	defer a.Close()
	loads := make(chan struct{}, 100)
	b := NewCapacities(openStore(t, addr, prefix), source("b"), func() {
		select {
		case loads <- struct{}{}:
		default:
		}
	}, WithEvery(every))
	defer b.Close()
	eventually(t, "b to see a's limit", func() bool { return b.Limit("deepseek-eu") == 40 })
	eventually(t, "a to see b's limits", func() bool { return a.Limit("deepseek-eu") == 60 && a.Limit("deepseek-us") == 10 })
	if got := b.Limit("deepseek-us"); got != 0 {
		t.Errorf("b sees its own limit for deepseek-us: %v, want 0 (only the others count)", got)
	}
	if len(loads) == 0 {
		t.Error("onLoad was not called after a read")
	}
	a.Close() // a stops writing: after three intervals its limit is gone
	eventually(t, "a's limit to age out", func() bool { return b.Limit("deepseek-eu") == 0 })

	var nilCaps *Capacities
	if got := NewCapacities(nil, source("a"), nil).Limit("deepseek-eu"); got != 0 || nilCaps.Limit("x") != 0 {
		t.Errorf("without Redis Limit = %v, want 0", got)
	}
}

// TestCooldownsClear: clearing a backend's cooldown on one replica ends it
// on the others.
func TestCooldownsClear(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	a := NewCooldowns(openStore(t, addr, prefix))
	defer a.Close()
	b := NewCooldowns(openStore(t, addr, prefix))
	defer b.Close()
	until := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	a.Publish("deepseek-eu", until)
	eventually(t, "b to see the cooldown", func() bool { return b.OpenUntil("deepseek-eu").Equal(until) })
	b.Clear("deepseek-eu")
	if got := b.OpenUntil("deepseek-eu"); !got.IsZero() {
		t.Errorf("after Clear on b: b.OpenUntil = %v, want zero at once", got)
	}
	eventually(t, "a to see the cooldown cleared", func() bool { return a.OpenUntil("deepseek-eu").IsZero() })
}
