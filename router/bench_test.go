package router

import (
	"context"
	"testing"
	"time"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/regions"
)

// BenchmarkComplete is the router's own cost per call on the hop
// benchmark's path (bench hop): one backend with non-binding qps and
// max_concurrency, a tenant quota, a fallback, breakers and retries on, the
// cache off; the provider answers at once from memory.
//
//	go test -run '^$' -bench Complete -benchmem ./router/
func BenchmarkComplete(b *testing.B) {
	fx := &fixture{}
	ep := "http://127.0.0.1:1/v1"
	cfg := &regions.Config{
		Regions:   []regions.Region{{Name: "home", Backends: []regions.Backend{{Name: "home-1", Endpoint: ep, QPS: 1e6, MaxConcurrency: 100000}}}},
		Fallbacks: []regions.Backend{{Name: "fb-1", Endpoint: ep}},
		Limits:    regions.LimitPolicy{TenantQPS: 1e6},
		Cache:     regions.CachePolicy{Disabled: true},
	}
	r, err := New(&regions.Snapshot{Config: cfg}, Options{Region: "home", NewProvider: fx.newProvider, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := auth.WithTenant(context.Background(), "bench")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var st CallStats
			cctx, cancel := context.WithTimeout(WithStats(ctx, &st), 5*time.Second)
			_, err := r.Complete(cctx, req())
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
