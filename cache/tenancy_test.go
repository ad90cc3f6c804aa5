package cache

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// TestTenantScopeKeepsAnswersApart: with authentication on (the default
// scope then) or scope: tenant, an answer stored for one tenant is never
// another tenant's hit; with scope: shared it is. (The key used to have no
// tenant at all.)
func TestTenantScopeKeepsAnswersApart(t *testing.T) {
	ctx := context.Background()
	alice := Caller{Tenant: "alice", Authenticated: true}
	bob := Caller{Tenant: "bob", Authenticated: true}
	tests := []struct {
		name       string
		scope      string
		a, b       Caller
		wantShared bool
	}{
		{"authenticated, default scope", "", alice, bob, false},
		{"scope tenant", ScopeTenant, Caller{Tenant: "alice"}, Caller{Tenant: "bob"}, false},
		{"scope shared", ScopeShared, alice, bob, true},
		{"authentication off, default scope", "", Caller{Tenant: "alice"}, Caller{Tenant: "bob"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Config{Scope: tt.scope}, nil)
			c.Put(c.Plan(request("q"), tt.a), answer("for "+tt.a.Tenant))
			if _, ok := c.Get(ctx, c.Plan(request("q"), tt.a)); !ok {
				t.Fatal("the tenant that stored it misses")
			}
			if _, ok := c.Get(ctx, c.Plan(request("q"), tt.b)); ok != tt.wantShared {
				t.Errorf("another tenant hits: %v, want %v", ok, tt.wantShared)
			}
		})
	}
}

// TestPerUserKeysOnTheTenantToo: per_user keys on the tenant as well as the
// caller-supplied user, so that one tenant sending another tenant's user id
// never reads that tenant's answers, even in the shared scope.
func TestPerUserKeysOnTheTenantToo(t *testing.T) {
	c := newCache(t, Config{PerUser: true, Scope: ScopeShared}, nil)
	withUser := func(u string) *detourv1.CompleteRequest {
		r := request("q")
		r.User = u
		return r
	}
	c.Put(c.Plan(withUser("u1"), Caller{Tenant: "alice"}), answer("alice's u1"))
	ctx := context.Background()
	if _, ok := c.Get(ctx, c.Plan(withUser("u1"), Caller{Tenant: "alice"})); !ok {
		t.Fatal("the same tenant and user miss")
	}
	if _, ok := c.Get(ctx, c.Plan(withUser("u2"), Caller{Tenant: "alice"})); ok {
		t.Error("another user of the same tenant hits")
	}
	if _, ok := c.Get(ctx, c.Plan(withUser("u1"), Caller{Tenant: "mallory"})); ok {
		t.Error("another tenant sending the same user id hits")
	}
}

// TestTTLHintCannotSetOthersFreshness: in the shared scope a caller's ttl
// hint bounds only what that caller reads; the answer it stores stays fresh
// for the configured ttl for everyone else (a hint used to set the stored
// freshness for every tenant).
func TestTTLHintCannotSetOthersFreshness(t *testing.T) {
	clk := newClock()
	c := newCache(t, Config{TTL: time.Minute}, nil, WithClock(clk.Now))
	ctx := context.Background()
	hinted := func(ttl time.Duration) *detourv1.CompleteRequest {
		r := request("q")
		r.Cache = &detourv1.CacheHints{Ttl: durationpb.New(ttl)}
		return r
	}
	// A caller asking for a day stores nothing longer than the ttl.
	c.Put(c.Plan(hinted(24*time.Hour), Caller{Tenant: "a"}), answer("x"))
	clk.Advance(61 * time.Second)
	if _, ok := c.Get(ctx, c.Plan(request("q"), Caller{Tenant: "b"})); ok {
		t.Error("an answer stored with a long ttl hint is fresh past the configured ttl")
	}
	// A caller asking for 10 s takes only answers younger than that, and
	// others still get the answer for the configured minute.
	c.Put(c.Plan(hinted(10*time.Second), Caller{Tenant: "a"}), answer("y"))
	clk.Advance(20 * time.Second)
	if _, ok := c.Get(ctx, c.Plan(hinted(10*time.Second), Caller{Tenant: "a"})); ok {
		t.Error("a 20 s old answer is fresh for a caller that asked for 10 s")
	}
	if _, ok := c.Get(ctx, c.Plan(request("q"), Caller{Tenant: "b"})); !ok {
		t.Error("a short ttl hint made the answer stale for everyone")
	}
}

// TestSharedScopeSharesCallsOnlyWithinATenant: in the shared scope two
// tenants read each other's stored answers, but identical requests in flight
// at once share an upstream call only within one tenant (the call waits in
// one tenant's queue place and goes upstream as that tenant).
func TestSharedScopeSharesCallsOnlyWithinATenant(t *testing.T) {
	c := newCache(t, Config{Scope: ScopeShared}, nil)
	u := newUpstream()
	alice := c.Plan(request("q"), Caller{Tenant: "alice", Authenticated: true})
	bob := c.Plan(request("q"), Caller{Tenant: "bob", Authenticated: true})
	if alice.Key != bob.Key {
		t.Fatal("shared scope: the tenants' answers have different keys")
	}
	done := make(chan error, 3)
	for _, p := range []Plan{alice, alice, bob} {
		go func() {
			_, err := c.Do(context.Background(), p, u.complete)
			done <- err
		}()
	}
	eventually(t, "alice's second call to join and bob's to start its own", func() bool {
		return c.Stats().Coalesced == 1 && u.calls.Load() == 2
	})
	close(u.release)
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := u.calls.Load(); got != 2 {
		t.Errorf("%d upstream calls, want 2 (one per tenant)", got)
	}
}
