package cache_test

import (
	"context"
	"fmt"
	"time"

	"github.com/detour-dev/detour/cache"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func zero() *float64 { var z float64; return &z }

// The router's path through the cache: a miss goes upstream once and stores
// the live answer; the next identical request is answered from the cache.
func ExampleCache() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	c := cache.New(cache.Config{TTL: time.Minute}, nil, cache.WithClock(func() time.Time { return now }))
	defer c.Close()
	ctx := context.Background()

	complete := func(req *detourv1.CompleteRequest) *detourv1.CompleteResponse {
		p := c.Plan(req)
		if hit, ok := c.Get(ctx, p); ok {
			return hit.Response()
		}
		resp, _ := c.Do(ctx, p, func(ctx context.Context) (*detourv1.CompleteResponse, error) {
			return &detourv1.CompleteResponse{Content: "positive", FinishReason: "stop", Source: detourv1.Source_SOURCE_LIVE, Attempts: 1}, nil
		})
		return resp
	}
	req := &detourv1.CompleteRequest{
		Model:       "deepseek-chat",
		Messages:    []*detourv1.Message{{Role: "user", Content: "Sentiment of: I love it"}},
		Temperature: zero(),
	}
	r := complete(req)
	fmt.Println(r.GetContent(), r.GetSource(), r.GetAttempts())
	now = now.Add(10 * time.Second)
	r = complete(req)
	fmt.Println(r.GetContent(), r.GetSource(), r.GetAttempts(), r.GetAge().AsDuration())

	// Output:
	// positive SOURCE_LIVE 1
	// positive SOURCE_CACHE 0 10s
}

// Past its TTL an answer is served only as the last resort, by GetStale,
// within the stale window and the request's max_stale.
func ExampleCache_GetStale() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	c := cache.New(cache.Config{TTL: time.Minute, StaleWindow: time.Hour}, nil, cache.WithClock(func() time.Time { return now }))
	defer c.Close()
	ctx := context.Background()
	req := &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: "hi"}}, Temperature: zero()}
	p := c.Plan(req)
	c.Put(p, &detourv1.CompleteResponse{Content: "hello", FinishReason: "stop", Source: detourv1.Source_SOURCE_LIVE})

	now = now.Add(5 * time.Minute)
	_, fresh := c.Get(ctx, p)
	hit, stale := c.GetStale(ctx, p)
	fmt.Println(fresh, stale, hit.Response().GetSource(), hit.Age)

	// Output:
	// false true SOURCE_STALE_CACHE 5m0s
}

// Only deterministic requests are cached unless the caller opts in.
func ExampleCache_Plan() {
	c := cache.New(cache.Config{}, nil)
	defer c.Close()
	t := 0.7
	for _, req := range []*detourv1.CompleteRequest{
		{Model: "m", Temperature: zero()},
		{Model: "m", Temperature: &t},
		{Model: "m", Temperature: &t, Cache: &detourv1.CacheHints{ForceCache: true}},
		{Model: "m", Temperature: zero(), Cache: &detourv1.CacheHints{NoCache: true}},
	} {
		p := c.Plan(req)
		fmt.Printf("%v %q\n", p.Cacheable, p.Reason)
	}

	// Output:
	// true ""
	// false "nondeterministic"
	// true ""
	// false "no_cache"
}

// Keys ignore what does not change the answer.
func ExampleKeyOf() {
	a := &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: "hi"}},
		Stop: []string{"a", "b"}}
	b := &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "User", Content: "hi\n"}},
		Stop: []string{"b", "a"}, Routing: &detourv1.RoutingHints{PreferRegion: "us-east"}}
	fmt.Println(cache.KeyOf(a, false) == cache.KeyOf(b, false))

	// Output:
	// true
}
