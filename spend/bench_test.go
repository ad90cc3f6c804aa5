package spend

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/metrics"
	"github.com/detour-dev/detour/regions"
)

// benchConfig limits tenant search by a token rate and a budget in money
// that the benchmark never reaches, with prices: every part of metering
// runs.
func benchConfig() *regions.Config {
	return config(regions.SpendPolicy{
		Prices: []regions.Price{{Model: "deepseek-chat", Input: 0.27, CacheHitInput: 0.07, Output: 1.10}},
		Tenants: []regions.TenantSpend{{Name: "search", SpendLimits: regions.SpendLimits{
			TPM: 1e12, Budget: &regions.Budget{Period: regions.PeriodMonth, Amount: 1e12}}}},
	})
}

// meterCall is the metering of one call as the router does it: reserve at
// admission, charge the upstream call's usage, release.
func meterCall(b *testing.B, m *Meter) {
	r, err := m.Reserve("search", benchReq)
	if err != nil {
		b.Error(err)
		return
	}
	m.Charge("search", "deepseek-chat", "ds", Tokens{Prompt: 120, CacheHit: 64, CacheMiss: 56, Completion: 80, Reasoning: 10})
	r.Release()
}

var benchReq = request(120, 200)

func benchMeter(b *testing.B, redis bool) (*Meter, *fleet.Store) {
	b.Helper()
	var s *fleet.Store
	if redis {
		var err error
		s, err = fleet.Open(fleet.Config{Addr: fleettest.Addr(b), KeyPrefix: fleettest.Prefix(b)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
	}
	m := New(s, benchConfig(), WithMetrics(metrics.New()))
	b.Cleanup(func() { m.Close() })
	for range 100 { // the first leases, the series
		meterCall(b, m)
	}
	return m, s
}

// BenchmarkMeter is the per-call cost of token metering (reserve, charge
// with metrics, usage counters and both limits, release), in parallel.
func BenchmarkMeter(b *testing.B) {
	for _, redis := range []bool{true, false} {
		name := "local"
		if redis {
			name = "redis"
		}
		b.Run(name, func(b *testing.B) {
			m, s := benchMeter(b, redis)
			ops := s.Ops()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					meterCall(b, m)
				}
			})
			b.ReportMetric(float64(s.Ops()-ops)/float64(b.N), "redis-ops/op")
		})
	}
}

// BenchmarkMeter5k paces calls at 5,000/s from 16 goroutines through the
// metering of a call with Redis (as BenchmarkHotPath5k does for the fleet's
// qps limiter) and reports the latency it adds per call (p50, p99, p99.9,
// max), the Redis operations per call (lease requests and settlements,
// none on a call's own path in the steady state; the usage counters are
// written every second apart from calls) and the share of calls made
// while the Store had backed off from Redis. Run it with
// -benchtime=20000x.
func BenchmarkMeter5k(b *testing.B) {
	m, s := benchMeter(b, true)
	const rate, workers = 5000, 16
	lat := make([]time.Duration, b.N)
	var next, fallbacks atomic.Int64
	ops := s.Ops()
	start := time.Now()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
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
				meterCall(b, m)
				lat[i] = time.Since(t0)
				if !s.Available() {
					fallbacks.Add(1)
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds()), "p999-ns")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds()), "max-ns")
	b.ReportMetric(float64(s.Ops()-ops)/float64(b.N), "redis-ops/op")
	b.ReportMetric(float64(fallbacks.Load())/float64(b.N), "backoff-share")
}
