package router

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/spend"
)

// spendConfig is testConfig with tenant "team" limited by l.
func spendConfig(l regions.SpendLimits) *regions.Config {
	cfg := testConfig()
	cfg.Tenants = []regions.Tenant{{Principal: regions.Principal{Name: "team"}}}
	cfg.Spend = regions.SpendPolicy{Tenants: []regions.TenantSpend{{Name: "team", SpendLimits: l}}}
	return cfg
}

func team() context.Context { return auth.WithTenant(context.Background(), "team") }

// usage returns the router's report of team's usage today.
func usage(t *testing.T, r *Router) []spend.Row {
	t.Helper()
	rep, err := r.Usage(context.Background(), spend.Query{Tenant: "team"})
	if err != nil {
		t.Fatal(err)
	}
	return rep.Rows
}

// Over its token rate, a tenant's call is refused before it is routed, with
// a retry hint; over its budget, with the period's end.
func TestTokenLimitsRefuseAtAdmission(t *testing.T) {
	fx := &fixture{}
	clk := testkit.NewClock(time.Date(2026, 5, 14, 12, 0, 0, 0, time.UTC))
	r, err := New(&regions.Snapshot{Config: spendConfig(regions.SpendLimits{TPM: 600, TPMBurst: 300})},
		Options{Region: "home", NewProvider: fx.newProvider, Logger: quiet, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		return &detourv1.CompleteResponse{Content: "ok", FinishReason: "stop",
			Usage: &detourv1.Usage{PromptTokens: 150, CompletionTokens: 50, TotalTokens: 200}}, nil
	}
	big := req()
	big.MaxTokens = 1000 // 3+4+1 prompt + 1000: a 1008-token reservation, settled at 200
	for i := range 2 {   // the bucket conforms while at most 300 ahead: 200, then 400
		if _, err := r.Complete(team(), big); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	calls := fx.provider("home-1").calls.Load()
	_, err = r.Complete(team(), big)
	var re *Error
	if !errors.As(err, &re) || re.Code != OverTokenRate || re.RetryAfter <= 0 || !strings.Contains(re.Message, `"team"`) {
		t.Fatalf("over the rate: %v, want OverTokenRate with a retry hint", err)
	}
	if got := fx.provider("home-1").calls.Load(); got != calls {
		t.Errorf("a refused call reached the backend")
	}
	// Charged the usage, not the 1008 reserved.
	if got, want := usage(t, r), []spend.Row{{Tenant: "team", Model: "other", Calls: 2, Prompt: 300, Completion: 100}}; !cmp.Equal(got, want) {
		t.Errorf("usage %+v, want %+v", got, want)
	}

	cfg := spendConfig(regions.SpendLimits{Budget: &regions.Budget{Period: regions.PeriodDay, Tokens: 100}})
	if err := r.Apply(&regions.Snapshot{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	_, err = r.Complete(team(), big)
	if !errors.As(err, &re) || re.Code != OverBudget || !re.Until.Equal(time.Date(2026, 5, 15, 0, 0, 0, 0, time.UTC)) ||
		!strings.HasPrefix(re.Message, "budget exhausted until 2026-05-15T00:00:00Z: tenant \"team\"") {
		t.Fatalf("over the budget: %v, want OverBudget until midnight", err)
	}
}

// A call that fails upstream is released and charged nothing; a stream cut
// mid-way is charged its prompt estimate and the text it streamed.
func TestFailedAndCutCalls(t *testing.T) {
	fx := &fixture{}
	cfg := spendConfig(regions.SpendLimits{Budget: &regions.Budget{Period: regions.PeriodDay, Tokens: 300}})
	cfg.Fallbacks = nil
	for _, name := range []string{"home-1", "near-1", "far-1"} {
		fx.provider(name).complete = busy
	}
	r := newTestRouter(t, fx, cfg)
	big := req()
	big.MaxTokens = 250 // 258 reserved of 300: two at once would not fit
	for i := range 5 {
		if _, err := r.Complete(team(), big); err == nil || errors.As(err, new(*spend.LimitError)) {
			t.Fatalf("call %d: %v, want the backends' failure (the reservation released)", i, err)
		}
	}
	if got := usage(t, r); len(got) != 0 {
		t.Errorf("failed calls charged %+v, want nothing", got)
	}
	// The stream sends "hello " and "world" and breaks.
	for _, name := range []string{"home-1", "near-1", "far-1"} {
		fx.provider(name).stream = func(context.Context) (ChunkStream, error) {
			return &sliceStream{chunks: []string{"hello ", "world"}, err: httpErr{code: 500}}, nil
		}
	}
	var got []string
	err := r.Stream(team(), big, func(ch *detourv1.CompleteChunk) error {
		got = append(got, ch.GetDelta())
		return nil
	})
	if err == nil || len(got) != 2 {
		t.Fatalf("stream: %q, %v; want two chunks and an error", got, err)
	}
	want := []spend.Row{{Tenant: "team", Model: "other", Calls: 1, Prompt: 8, Completion: 3}} // ⌈11 bytes/4⌉
	if diff := cmp.Diff(usage(t, r), want); diff != "" {
		t.Errorf("cut stream charged (-got +want):\n%s", diff)
	}
}

// Callers that share one upstream call are one tenant's; the call is
// charged once, with its usage, and each other caller is a saving, as is
// a cache hit.
func TestSharedCallChargedOnce(t *testing.T) {
	fx := &fixture{}
	cfg := spendConfig(regions.SpendLimits{TPM: 1e6})
	cfg.Spend.Prices = []regions.Price{{Input: 1, Output: 2}}
	r := newTestRouter(t, fx, cfg)
	g := newGate()
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
		return &detourv1.CompleteResponse{Content: "shared", FinishReason: "stop",
			Usage: &detourv1.Usage{PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15}}, nil
	}
	const n = 4
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := r.Complete(team(), detReq("same")); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, func() bool { return g.arrived.Load() == 1 && r.tab.Load().cache.Stats().Coalesced == n-1 }, "every caller on one call")
	close(g.open)
	wg.Wait()
	if _, err := r.Complete(team(), detReq("same")); err != nil { // a cache hit
		t.Fatal(err)
	}
	want := []spend.Row{{Tenant: "team", Model: "other", Calls: 1, Prompt: 10, Completion: 5, Spend: 20e-6,
		SavedCalls: n, SavedTokens: n * 15, Savings: n * 20e-6}}
	if diff := cmp.Diff(usage(t, r), want, cmp.Comparer(func(a, b float64) bool { return a-b < 1e-12 && b-a < 1e-12 })); diff != "" {
		t.Errorf("usage (-got +want):\n%s", diff)
	}
}
