package cache

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// benchRequests are a short classification prompt and a 4 KiB one.
func benchRequests() map[string]*detourv1.CompleteRequest {
	small := baseRequest()
	big := baseRequest()
	big.Messages[1].Content = strings.Repeat("Summarize this paragraph. ", 160) // ~4 KiB
	return map[string]*detourv1.CompleteRequest{"small": small, "4KiB": big}
}

// BenchmarkKeyOf is the canonical key: a length-prefixed encoding into a
// pooled buffer, then SHA-256.
func BenchmarkKeyOf(b *testing.B) {
	for name, req := range benchRequests() {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				KeyOf(req, "", false)
			}
		})
	}
}

// BenchmarkKeyOfProto is the alternative: a deterministic protobuf encoding
// of a copy without the hints, then SHA-256 (and without KeyOf's
// normalization).
func BenchmarkKeyOfProto(b *testing.B) {
	opts := proto.MarshalOptions{Deterministic: true}
	for name, req := range benchRequests() {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c := proto.CloneOf(req)
				c.Routing, c.Cache, c.User = nil, nil, ""
				buf, _ := opts.Marshal(c)
				_ = sha256.Sum256(buf)
			}
		})
	}
}

// BenchmarkLocalHit is step 1 on a hit: Plan (the key), Get, Response.
func BenchmarkLocalHit(b *testing.B) {
	c := New(Config{}, nil)
	defer c.Close()
	req := baseRequest()
	c.Put(c.Plan(req, Caller{}), answer("positive"))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			hit, ok := c.Get(ctx, c.Plan(req, Caller{}))
			if !ok {
				b.Fatal("miss")
			}
			hit.Response()
		}
	})
}

// BenchmarkRedisHit is step 1 answered by the shared tier (no local tier):
// one Redis GET per call.
func BenchmarkRedisHit(b *testing.B) {
	store := benchStore(b)
	c := New(Config{MaxBytes: -1}, store)
	defer c.Close()
	req := baseRequest()
	p := c.Plan(req, Caller{})
	c.Put(p, answer("positive"))
	ctx := context.Background()
	for _, ok := c.Get(ctx, p); !ok; _, ok = c.Get(ctx, p) {
		// the write is in the background: wait for it
	}
	ops := store.Ops()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		hit, ok := c.Get(ctx, c.Plan(req, Caller{}))
		if !ok {
			b.Fatal("miss")
		}
		hit.Response()
	}
	b.ReportMetric(float64(store.Ops()-ops)/float64(b.N), "redis-ops/op")
}

// BenchmarkRedisMiss is what a miss costs before the upstream call when the
// fleet has a Redis: one Redis GET.
func BenchmarkRedisMiss(b *testing.B) {
	store := benchStore(b)
	c := New(Config{}, store)
	defer c.Close()
	p := c.Plan(baseRequest(), Caller{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Get(ctx, p); ok {
			b.Fatal("hit")
		}
	}
}

func benchStore(b *testing.B) *fleet.Store {
	b.Helper()
	s, err := fleet.Open(fleet.Config{Addr: fleettest.Addr(b), KeyPrefix: fleettest.Prefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}
