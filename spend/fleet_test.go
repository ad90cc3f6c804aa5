package spend

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/regions"
)

// replica is one Meter on the shared Redis at addr under prefix.
func replica(t *testing.T, addr, prefix string, cfg *regions.Config) *Meter {
	t.Helper()
	s, err := fleet.Open(fleet.Config{Addr: addr, KeyPrefix: prefix, Timeout: 200 * time.Millisecond, Replicas: 2})
	if err != nil {
		t.Fatal(err)
	}
	m := New(s, cfg, WithSyncEvery(10*time.Millisecond))
	m.leaseTTL = 50 * time.Millisecond // give back unreserved units soon
	t.Cleanup(func() {
		m.Close()
		s.Close()
	})
	return m
}

// settled waits until m holds no leased units and owes Redis nothing.
func settled(t *testing.T, m *Meter) {
	t.Helper()
	testkit.Until(t, 5*time.Second, "leases given back and charges sent", func() bool {
		done := true
		m.accounts.Range(func(_, v any) bool {
			a := v.(*account)
			pools := []*pool{a.rate}
			if b := a.budget.Load(); b != nil {
				pools = append(pools, b.pool)
			}
			for _, p := range pools {
				p.mu.Lock()
				done = done && p.avail == 0 && p.owed == 0 && p.leasing == nil
				p.mu.Unlock()
			}
			return true
		})
		return done
	})
}

// admitted reserves n calls of size tokens (half prompt, half max_tokens)
// on m, charging each its estimate, and returns how many were admitted.
func admitted(m *Meter, tenant string, n, size int) int {
	ok := 0
	for range n {
		r, err := m.Reserve(tenant, request(size/2, size/2))
		if err != nil {
			continue
		}
		ok++
		m.Charge(tenant, "deepseek-chat", "ds", Tokens{Prompt: int64(size / 2), Completion: int64(size / 2)})
		r.Release()
	}
	return ok
}

// Two replicas share one token rate through Redis: what one spends, the
// other cannot. The rate is 1 token a second, so the burst (1000 tokens) is
// all there is during the test.
func TestFleetTPMShared(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	cfg := config(regions.SpendPolicy{Tenants: []regions.TenantSpend{{Name: "search", SpendLimits: regions.SpendLimits{TPM: 60, TPMBurst: 1000}}}})
	a, b := replica(t, addr, prefix, cfg), replica(t, addr, prefix, cfg)
	got := admitted(a, "search", 6, 100)
	settled(t, a) // what a leased and did not reserve is b's now
	got += admitted(b, "search", 6, 100)
	// The bucket conforms while at most 1000 tokens ahead: 11 calls of
	// 100, the last as debt.
	if got != 11 {
		t.Errorf("admitted %d calls of 100 tokens across two replicas, want 11 (a 1000-token burst at 1 token/s)", got)
	}
	_, err := b.Reserve("search", request(50, 50))
	if le := limitErr(t, err); le.RetryAfter < 50*time.Second {
		t.Errorf("refusal %+v, want a retry in a minute or more (1 token/s)", le)
	}
}

// A reservation larger than the usage is settled: the tokens reserved and
// not spent go back to Redis, where the other replica can use them.
func TestFleetSettlementReturnsTokens(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	cfg := config(regions.SpendPolicy{Tenants: []regions.TenantSpend{{Name: "search", SpendLimits: regions.SpendLimits{TPM: 60, TPMBurst: 1000}}}})
	a, b := replica(t, addr, prefix, cfg), replica(t, addr, prefix, cfg)
	// a reserves 900 and spends 100: 800 go back.
	r, err := a.Reserve("search", request(100, 800))
	if err != nil {
		t.Fatal(err)
	}
	a.Charge("search", "deepseek-chat", "ds", Tokens{Prompt: 80, Completion: 20})
	r.Release()
	// A failed call: reserved and released, nothing charged.
	r, err = a.Reserve("search", request(100, 800))
	if err != nil {
		t.Fatal(err)
	}
	r.Release()
	settled(t, a)
	if got := admitted(b, "search", 12, 100); got != 10 {
		t.Errorf("b admitted %d calls of 100 after a spent 100 of a 1000 burst, want 10 (the last as debt)", got)
	}
}

// A budget is the fleet's: one replica's spend is counted on the other,
// and the report of either sums both.
func TestFleetBudgetAndReport(t *testing.T) {
	addr, prefix := fleettest.Addr(t), fleettest.Prefix(t)
	cfg := config(regions.SpendPolicy{Tenants: []regions.TenantSpend{{Name: "billing",
		SpendLimits: regions.SpendLimits{Budget: &regions.Budget{Period: regions.PeriodMonth, Tokens: 1000}}}}})
	a, b := replica(t, addr, prefix, cfg), replica(t, addr, prefix, cfg)
	if got := admitted(a, "billing", 3, 200); got != 3 {
		t.Fatalf("a admitted %d of 3 calls of 200 tokens, want 3", got)
	}
	a.Save("billing", "deepseek-chat", "ds", Tokens{Prompt: 5, Completion: 5})
	// b learns of a's 600 through Redis: 400 are left.
	settled(t, a)
	testkit.Until(t, 5*time.Second, "b sees a's spend", func() bool {
		st := b.Budgets()
		return len(st) == 1 && st[0].Used == 600
	})
	if _, err := b.Reserve("billing", request(250, 250)); err == nil {
		t.Error("b admitted a 500-token call with 400 of the fleet's 1000 left")
	} else if le := limitErr(t, err); le.Limit != LimitBudget {
		t.Errorf("refusal %+v", le)
	}
	if got := admitted(b, "billing", 3, 200); got != 2 {
		t.Errorf("b admitted %d calls of 200 with 400 left, want 2", got)
	}
	settled(t, b)
	b.flush(t.Context()) // b's usage counters
	rep, err := a.Report(t.Context(), Query{Tenant: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{{Tenant: "billing", Model: "deepseek-chat", Calls: 5, Prompt: 500, Completion: 500, SavedCalls: 1, SavedTokens: 10}}
	if diff := cmp.Diff(rep.Rows, want); diff != "" || !rep.Fleet {
		t.Errorf("fleet %v, rows (-got +want):\n%s", rep.Fleet, diff)
	}
	if len(rep.Budgets) != 1 || rep.Budgets[0].Used != 1000 || rep.Budgets[0].Limit != 1000 {
		t.Errorf("budgets %+v, want billing's 1000 of 1000", rep.Budgets)
	}
}

// Without Redis each replica holds its share of a limit (1/replicas).
func TestFleetRedisDown(t *testing.T) {
	srv := fleettest.Start(t)
	cfg := config(regions.SpendPolicy{Tenants: []regions.TenantSpend{{Name: "search", SpendLimits: regions.SpendLimits{TPM: 60, TPMBurst: 1000}}}})
	a := replica(t, srv.Addr, fleettest.Prefix(t), cfg)
	srv.Kill()
	// The share: 500 tokens of burst at 0.5 token/s; the first call finds
	// Redis dead (a timeout), the rest see the Store's backoff.
	if got := admitted(a, "search", 10, 100); got != 6 {
		t.Errorf("admitted %d calls of 100 with Redis down, want 6 (half the burst of 2 replicas' limit)", got)
	}
}
