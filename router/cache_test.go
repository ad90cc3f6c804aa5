package router

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// detReq is a deterministic request (temperature 0), cacheable by default.
func detReq(prompt string) *detourv1.CompleteRequest {
	zero := 0.0
	return &detourv1.CompleteRequest{Model: "m", Temperature: &zero, Messages: []*detourv1.Message{{Role: "user", Content: prompt}}}
}

type answer struct {
	Source   detourv1.Source
	Attempts int32
	Content  string
	Age      time.Duration
}

func answerOf(resp *detourv1.CompleteResponse) answer {
	return answer{Source: resp.GetSource(), Attempts: resp.GetAttempts(), Content: resp.GetContent(), Age: resp.GetAge().AsDuration()}
}

func TestCachePath(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	cfg.Cache.TTL = time.Minute
	cfg.Cache.StaleWindow = time.Hour
	r := newClockedRouter(t, fx, cfg, clk)
	home := fx.provider("home-1")
	ask := func(req *detourv1.CompleteRequest) answer {
		t.Helper()
		resp, err := r.Complete(context.Background(), req)
		if err != nil {
			t.Fatalf("Complete: %v", err)
		}
		return answerOf(resp)
	}
	live := answer{Source: detourv1.Source_SOURCE_LIVE, Attempts: 1, Content: "from home-1"}
	if diff := cmp.Diff(ask(detReq("q")), live); diff != "" {
		t.Errorf("first call (-got +want):\n%s", diff)
	}
	clk.Advance(10 * time.Second)
	if diff := cmp.Diff(ask(detReq("q")), answer{Source: detourv1.Source_SOURCE_CACHE, Content: "from home-1", Age: 10 * time.Second}); diff != "" {
		t.Errorf("repeat within TTL (-got +want):\n%s", diff)
	}
	if n := home.calls.Load(); n != 1 {
		t.Errorf("%d upstream calls for a repeated deterministic request, want 1", n)
	}
	// Not cached: a sampled request, and the no_cache hint.
	sampled := req()
	ask(sampled)
	ask(sampled)
	noCache := detReq("q")
	noCache.Cache = &detourv1.CacheHints{NoCache: true}
	ask(noCache)
	if n := home.calls.Load(); n != 4 {
		t.Errorf("%d upstream calls, want 4: sampled and no_cache requests are not cached", n)
	}
	// Past TTL, live answers again while backends are healthy.
	clk.Advance(2 * time.Minute)
	if got := ask(detReq("q")); got.Source != detourv1.Source_SOURCE_LIVE {
		t.Errorf("past TTL with healthy backends: source %v, want LIVE", got.Source)
	}
	// Everything busy: the stale answer, marked and aged.
	clk.Advance(2 * time.Minute)
	for _, n := range []string{"home-1", "near-1", "far-1", "fb-1"} {
		fx.provider(n).complete = busy
	}
	if diff := cmp.Diff(ask(detReq("q")), answer{Source: detourv1.Source_SOURCE_STALE_CACHE, Content: "from home-1", Age: 2 * time.Minute}); diff != "" {
		t.Errorf("all busy (-got +want):\n%s", diff)
	}
	// max_stale narrower than the answer's staleness: no stale answer.
	strict := detReq("q")
	strict.Cache = &detourv1.CacheHints{MaxStale: durationpb.New(30 * time.Second)}
	if _, err := r.Complete(context.Background(), strict); err == nil {
		t.Error("max_stale 30s served an answer 1 minute past its TTL")
	}
	// A request never answered has no stale answer.
	if _, err := r.Complete(context.Background(), detReq("never asked")); err == nil {
		t.Error("all busy and nothing cached: want an error")
	}
}

func TestCachedStreamReplays(t *testing.T) {
	fx, clk := &fixture{}, newClock()
	cfg := testConfig()
	r := newClockedRouter(t, fx, cfg, clk)
	collect := func() ([]string, detourv1.Source) {
		var deltas []string
		var src detourv1.Source
		if err := r.Stream(context.Background(), detReq("story"), func(c *detourv1.CompleteChunk) error {
			deltas, src = append(deltas, c.GetDelta()), c.GetSource()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return deltas, src
	}
	first, src1 := collect()
	second, src2 := collect()
	if diff := cmp.Diff(second, first); diff != "" {
		t.Errorf("replayed chunks (-got +want):\n%s", diff)
	}
	if src1 != detourv1.Source_SOURCE_LIVE || src2 != detourv1.Source_SOURCE_CACHE {
		t.Errorf("sources %v then %v, want LIVE then CACHE", src1, src2)
	}
	if n := fx.provider("home-1").calls.Load(); n != 1 {
		t.Errorf("%d upstream streams, want 1", n)
	}
}

func TestCoalescing(t *testing.T) {
	fx := &fixture{}
	release := make(chan struct{})
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return &detourv1.CompleteResponse{Content: "shared", FinishReason: "stop"}, nil
	}
	r := newTestRouter(t, fx, testConfig())
	const n = 50
	errs := make(chan error, n)
	for range n {
		go func() {
			resp, err := r.Complete(context.Background(), detReq("same"))
			if err == nil && resp.GetContent() != "shared" {
				err = context.Canceled
			}
			errs <- err
		}()
	}
	// Wait until the one upstream call is in flight, then let it answer.
	waitFor(t, func() bool { return fx.provider("home-1").calls.Load() > 0 }, "the upstream call starts")
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := fx.provider("home-1").calls.Load(); got != 1 {
		t.Errorf("%d upstream calls for %d identical concurrent requests, want 1", got, n)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testkit.Until(t, 10*time.Second, what, cond)
}
