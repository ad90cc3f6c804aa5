package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/detour-dev/detour/fleet/fleettest"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(Config{Addr: fleettest.Addr(b), KeyPrefix: fleettest.Prefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkCooldownsOpenUntil is the hot-path check of the shared
// cooldowns: no Redis operation.
func BenchmarkCooldownsOpenUntil(b *testing.B) {
	store := benchStore(b)
	c := NewCooldowns(store)
	defer c.Close()
	for i := range 20 {
		c.Publish(fmt.Sprintf("backend-%d", i), time.Now().Add(time.Hour))
	}
	ops := store.Ops()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.OpenUntil("backend-7")
			c.OpenUntil("backend-x")
		}
	})
	b.ReportMetric(float64(store.Ops()-ops)/float64(b.N), "redis-ops/op")
}

// BenchmarkLimiterAllow is the fleet-wide limiter: one GCRA script call per
// Allow with Redis, a token bucket without.
func BenchmarkLimiterAllow(b *testing.B) {
	b.Run("redis", func(b *testing.B) {
		store := benchStore(b)
		store.cfg.Timeout = time.Second // measure Redis, not the fallback
		l := NewLimiter(store, 1)
		defer l.Close()
		ctx := context.Background()
		l.Allow(ctx, "b", 1e9) // load the script
		ops := store.Ops()
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow(ctx, "b", 1e9)
			}
		})
		b.ReportMetric(float64(store.Ops()-ops)/float64(b.N), "redis-ops/op")
	})
	b.Run("local", func(b *testing.B) {
		l := NewLimiter(nil, 1)
		defer l.Close()
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow(ctx, "b", 1e9)
			}
		})
	})
}

// perCall books one call in Redis per call (the GCRA script with n = 1),
// the design the Limiter's leases replace; for comparison.
func perCall(ctx context.Context, s *Store, key string, qps float64) bool {
	interval := int64(1e6 / qps)
	var res []int64
	err := s.Do(ctx, 0, func(ctx context.Context, r redis.Cmdable) error {
		var err error
		res, err = gcraScript.Run(ctx, r, []string{key}, interval, interval*int64(qps/10-1), 1).Int64Slice()
		return err
	})
	return err == nil && res[0] == 1
}

// BenchmarkGCRAPerCall is what a limiter asking Redis on every call costs.
func BenchmarkGCRAPerCall(b *testing.B) {
	store := benchStore(b)
	store.cfg.Timeout = time.Second // measure Redis, not the fallback
	ctx := context.Background()
	key := store.Key("limit", "b")
	perCall(ctx, store, key, 1e9)
	ops := store.Ops()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			perCall(ctx, store, key, 1e9)
		}
	})
	b.ReportMetric(float64(store.Ops()-ops)/float64(b.N), "redis-ops/op")
}

// BenchmarkHotPath5k paces calls at 5,000/s (the load) from 16
// goroutines through the shared-state hot path: the cooldown check and the
// limiter. It reports the latency this adds to a call (p50, p99, p99.9,
// max), the Redis operations per call, and the share of calls made while
// the Store was in backoff (a Redis op over the 5ms timeout). Run it with
// -benchtime=10000x or more (2 s per 10,000). "per-call" replaces the
// Limiter with one GCRA script call per call, for comparison.
func BenchmarkHotPath5k(b *testing.B) {
	b.Run("leased", func(b *testing.B) {
		store := benchStore(b)
		cool := NewCooldowns(store)
		defer cool.Close()
		l := NewLimiter(store, 1)
		defer l.Close()
		ctx := context.Background()
		l.Allow(ctx, "b", 1e9)
		paced(b, store, func() {
			if !cool.OpenUntil("b").IsZero() {
				b.Error("unexpected cooldown")
			}
			l.Allow(ctx, "b", 1e9)
		})
	})
	b.Run("per-call", func(b *testing.B) {
		store := benchStore(b)
		cool := NewCooldowns(store)
		defer cool.Close()
		ctx := context.Background()
		key := store.Key("limit", "b")
		perCall(ctx, store, key, 1e9)
		paced(b, store, func() {
			if !cool.OpenUntil("b").IsZero() {
				b.Error("unexpected cooldown")
			}
			perCall(ctx, store, key, 1e9)
		})
	})
}

func paced(b *testing.B, store *Store, call func()) {
	const rate = 5000
	const workers = 16
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var fallbacks atomic.Int64
	ops := store.Ops()
	start := time.Now()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				due := start.Add(time.Duration(i) * time.Second / rate)
				if d := time.Until(due); d > 0 {
					time.Sleep(d) // pacing the offered load, not waiting on a condition
				}
				t0 := time.Now()
				call()
				lat[i] = time.Since(t0)
				if !store.Available() {
					fallbacks.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds()), "p999-ns")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds()), "max-ns")
	b.ReportMetric(float64(store.Ops()-ops)/float64(b.N), "redis-ops/op")
	b.ReportMetric(float64(fallbacks.Load())/float64(b.N), "backoff-share")
}

// redisSharedStore is gobreaker's SharedDataStore on Redis: a SET NX lock,
// GET and SET of the state.
type redisSharedStore struct {
	rdb *redis.Client
	ops atomic.Int64
}

func (s *redisSharedStore) Lock(name string) error {
	s.ops.Add(1)
	ok, err := s.rdb.SetNX(context.Background(), name, "1", 5*time.Second).Result()
	if err == nil && !ok {
		return errors.New("locked")
	}
	return err
}

func (s *redisSharedStore) Unlock(name string) error {
	s.ops.Add(1)
	return s.rdb.Del(context.Background(), name).Err()
}

func (s *redisSharedStore) GetData(name string) ([]byte, error) {
	s.ops.Add(1)
	b, err := s.rdb.Get(context.Background(), name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

func (s *redisSharedStore) SetData(name string, data []byte) error {
	s.ops.Add(1)
	return s.rdb.Set(context.Background(), name, data, 0).Err()
}

// BenchmarkDistributedBreaker is the alternative design: gobreaker's
// DistributedCircuitBreaker, which reads, locks, writes and unlocks the
// shared state in Redis on every call. Serial: its lock makes concurrent
// calls across the fleet wait on each other (gobreaker sleeps 500ms when the
// lock is taken).
func BenchmarkDistributedBreaker(b *testing.B) {
	store := benchStore(b)
	ss := &redisSharedStore{rdb: store.Client()}
	cb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](ss, gobreaker.Settings{Name: store.Key("dcb")})
	if err != nil {
		b.Fatal(err)
	}
	ops := ss.ops.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := cb.Execute(func() (struct{}, error) { return struct{}{}, nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(ss.ops.Load()-ops)/float64(b.N), "redis-ops/op")
}
