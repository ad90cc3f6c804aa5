package router

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/cache"
	"github.com/detour-dev/detour/fleet"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// table is the routing state derived from one snapshot. It is immutable once
// published; the backends it points to carry the mutable live state.
type table struct {
	snap      *regions.Snapshot
	groups    []*group // primaries by region, ordered by priority then name
	fallbacks []*backend
	byName    map[string]*backend
	models    map[string]bool // models named by any backend
	anyModel  bool            // some backend names no models: it serves all
	policy    policy
	quotas    *quotas
	cache     *cache.Cache
	cool      *fleet.Cooldowns
}

type group struct {
	name     string
	backends []*backend
}

// policy is the retry policy with defaults applied.
type policy struct {
	maxAttempts    int
	backoffBase    time.Duration
	backoffMax     time.Duration
	attemptTimeout time.Duration
	hedgeAfter     time.Duration
	budgetRatio    float64
	budgetFloor    float64
}

func newPolicy(p regions.RetryPolicy) policy {
	return policy{
		maxAttempts:    orDefault(p.MaxAttempts, regions.DefaultMaxAttempts),
		backoffBase:    orDefault(p.BackoffBase.D(), regions.DefaultBackoffBase),
		backoffMax:     orDefault(p.BackoffMax.D(), regions.DefaultBackoffMax),
		attemptTimeout: orDefault(p.AttemptTimeout.D(), regions.DefaultAttemptTimeout),
		hedgeAfter:     p.HedgeAfter.D(),
		budgetRatio:    orDefault(p.BudgetRatio, regions.DefaultBudgetRatio),
		budgetFloor:    orDefault(p.BudgetMinPerSecond, regions.DefaultBudgetMinPerSecond),
	}
}

func orDefault[T cmp.Ordered](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// build derives a table from snap. Backends keep the live state (client,
// counters, limiter) of old's backend with the same identity; fresh lists the
// live states it created, so a failed build can close them.
func build(snap *regions.Snapshot, old *table, r *Router) (t *table, fresh []*live, err error) {
	if snap == nil || snap.Config == nil {
		return nil, nil, fmt.Errorf("router: no config")
	}
	cfg := snap.Config
	t = &table{
		snap:   snap,
		byName: map[string]*backend{},
		models: map[string]bool{},
		policy: newPolicy(cfg.Retry),
		quotas: newQuotas(cfg, old.quotasOrNil(), r.now),
		cool:   r.cooldowns,
	}
	if old != nil && old.snap.Config.Cache == cfg.Cache {
		t.cache = old.cache // keep the entries
	} else {
		t.cache = cache.New(cfg.Cache, r.opts.Fleet, cache.WithClock(r.now), cache.WithLogger(r.log))
	}
	add := func(bc regions.Backend, region string, fallback bool) (*backend, error) {
		bp := cfg.Breaker
		if bc.Breaker != nil {
			bp = *bc.Breaker
		}
		b := &backend{
			cfg: bc, region: region, fallback: fallback, kind: kindOf(bc.Kind),
			br:      r.breakers.Get(bc.Name, bp),
			maxConc: int64(bc.MaxConcurrency),
		}
		b.servedBy = &detourv1.ServedBy{Region: region, Backend: bc.Name, Kind: b.kind, Zone: bc.Zone}
		if prev := old.backend(bc.Name); prev != nil && prev.live.id == idOf(bc) {
			b.live = prev.live
		} else {
			m := r.opts.Metrics.Backend(bc.Name, region)
			var p Provider
			var err error
			if r.opts.NewProvider != nil {
				p, err = r.opts.NewProvider(bc)
			} else {
				p, err = newProvider(bc, m)
			}
			if err != nil {
				return nil, fmt.Errorf("backend %s: %w", bc.Name, err)
			}
			b.live = &live{id: idOf(bc), prov: p, m: m}
			fresh = append(fresh, b.live)
		}
		b.drained.Store(bc.Drained)
		t.byName[bc.Name] = b
		if !fallback {
			if len(bc.Models) == 0 {
				t.anyModel = true
			}
			for _, m := range bc.Models {
				t.models[m] = true
			}
		}
		return b, nil
	}
	regs := slices.Clone(cfg.Regions)
	slices.SortStableFunc(regs, func(a, b regions.Region) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Name, b.Name))
	})
	for _, rc := range regs {
		g := &group{name: rc.Name}
		for _, bc := range rc.Backends {
			b, err := add(bc, rc.Name, false)
			if err != nil {
				return nil, fresh, err
			}
			g.backends = append(g.backends, b)
		}
		t.groups = append(t.groups, g)
	}
	for _, bc := range cfg.Fallbacks {
		b, err := add(bc, "fallback", true)
		if err != nil {
			return nil, fresh, err
		}
		t.fallbacks = append(t.fallbacks, b)
	}
	return t, fresh, nil
}

func (t *table) backend(name string) *backend {
	if t == nil {
		return nil
	}
	return t.byName[name]
}

func (t *table) quotasOrNil() *quotas {
	if t == nil {
		return nil
	}
	return t.quotas
}

func (t *table) serves(model string) bool {
	return model != "" && (t.anyModel || t.models[model])
}

func (t *table) attemptTimeout(b *backend) time.Duration {
	if d := b.cfg.Timeout.D(); d > 0 {
		return d
	}
	return t.policy.attemptTimeout
}

// pick chooses the next primary: the preferred region first, then the others
// in priority order, and the region of the last busy attempt (avoid) only
// when no other region can take the call, since busy answers tend to come
// from a whole region at once. Within a region it uses weighted power of two
// choices by in-flight calls, preferring the own zone. It returns nil when no
// untried backend can take the call.
func (t *table) pick(now time.Time, model, prefer, avoid, zone string, tried []*backend) *backend {
	if prefer != avoid {
		for _, g := range t.groups {
			if g.name == prefer {
				if b := g.pick(now, t.cool, model, zone, tried); b != nil {
					return b
				}
				break
			}
		}
	}
	for _, g := range t.groups {
		if g.name == prefer || g.name == avoid {
			continue
		}
		if b := g.pick(now, t.cool, model, zone, tried); b != nil {
			return b
		}
	}
	for _, g := range t.groups {
		if g.name == avoid && avoid != "" {
			return g.pick(now, t.cool, model, zone, tried)
		}
	}
	return nil
}

func (g *group) pick(now time.Time, cool *fleet.Cooldowns, model, zone string, tried []*backend) *backend {
	var buf [16]*backend
	ok := buf[:0]
	total := 0
	for _, b := range g.backends {
		if b.available(now, cool, model) && !slices.Contains(tried, b) {
			ok = append(ok, b)
			total += b.cfg.EffectiveWeight()
		}
	}
	switch len(ok) {
	case 0:
		return nil
	case 1:
		return ok[0]
	}
	a := weighted(ok, total, nil)
	c := weighted(ok, total-a.cfg.EffectiveWeight(), a)
	if c.score(now, zone) < a.score(now, zone) {
		return c
	}
	return a
}

// weighted draws a backend other than skip with probability proportional to
// its weight; total is the sum of the weights of bs without skip.
func weighted(bs []*backend, total int, skip *backend) *backend {
	n := rand.IntN(total)
	for _, b := range bs {
		if b == skip {
			continue
		}
		n -= b.cfg.EffectiveWeight()
		if n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}

// score is lower for a backend that should get the next call: a lower
// recent cost (busy answers count as expensive), fewer in-flight calls per
// unit of weight, and in the caller's zone.
func (b *backend) score(now time.Time, zone string) float64 {
	cost := b.load.get(now) + 0.001
	s := cost * float64(b.inflight.Load()+1) / float64(b.cfg.EffectiveWeight())
	if zone != "" && b.cfg.Zone != "" && b.cfg.Zone != zone {
		s *= 1.5
	}
	return s
}

func (b *backend) serves(model string) bool {
	return !b.drained.Load() && b.cfg.Serves(model)
}

// available reports whether b may take a new call for model now: serving
// it, not drained, below max_concurrency, its breaker not open here nor held
// open by another replica. (The qps cap is checked when the call is made,
// since checking takes a token.)
func (b *backend) available(now time.Time, cool *fleet.Cooldowns, model string) bool {
	if !b.serves(model) || (b.maxConc > 0 && b.inflight.Load() >= b.maxConc) {
		return false
	}
	if until := cool.OpenUntil(b.cfg.Name); !until.IsZero() && now.Before(until) {
		return false
	}
	return b.br.State() != breaker.Open
}
