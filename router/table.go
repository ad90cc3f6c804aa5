package router

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/cache"
	"github.com/detour-dev/detour/capacity"
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
	capacity  capacityPolicy
	streams   regions.StreamPolicy
}

// capacityPolicy is the capacity section with defaults applied.
type capacityPolicy struct {
	disabled     bool
	maxQueueWait time.Duration // <= 0: never wait
	spillFactor  float64
	settings     capacity.Settings // without a backend's max_concurrency
}

func newCapacityPolicy(p regions.CapacityPolicy) capacityPolicy {
	wait := p.MaxQueueWait.D()
	switch {
	case p.Disabled:
		wait = 0
	case wait == 0:
		wait = regions.DefaultMaxQueueWait
	}
	return capacityPolicy{
		disabled:     p.Disabled,
		maxQueueWait: wait,
		spillFactor:  orDefault(p.SpillFactor, regions.DefaultSpillFactor),
		settings: capacity.Settings{
			Initial: p.InitialLimit, Min: p.MinLimit, Max: p.MaxLimit,
			QueueFactor: p.QueueFactor, Disabled: p.Disabled,
		},
	}
}

// limiterSettings are the capacity settings of backend b.
func (p capacityPolicy) limiterSettings(b regions.Backend) capacity.Settings {
	s := p.settings
	if b.MaxConcurrency > 0 && (s.Max <= 0 || b.MaxConcurrency < s.Max) {
		s.Max = b.MaxConcurrency
	}
	if s.Disabled && b.MaxConcurrency <= 0 {
		s.Max = capacity.Unlimited
	}
	return s
}

// breakerSettings converts a config policy to the breaker's settings.
func breakerSettings(p regions.BreakerPolicy) breaker.Settings {
	return breaker.Settings{
		ConsecutiveFailures: p.ConsecutiveFailures,
		ConsecutiveBusy:     p.ConsecutiveBusy,
		BusyRatio:           p.BusyRatio,
		MinRequests:         p.MinRequests,
		Window:              p.Window.D(),
		OpenFor:             p.OpenFor.D(),
		MaxOpen:             p.MaxOpen.D(),
		HalfOpenProbes:      p.HalfOpenProbes,
	}
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
	maxHint        time.Duration // longest RetryInfo passed on: breaker.max_open
}

func newPolicy(p regions.RetryPolicy, b regions.BreakerPolicy) policy {
	return policy{
		maxHint:        orDefault(b.MaxOpen.D(), breaker.DefaultMaxOpen),
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
		snap:     snap,
		byName:   map[string]*backend{},
		models:   map[string]bool{},
		policy:   newPolicy(cfg.Retry, cfg.Breaker),
		quotas:   newQuotas(cfg, old.quotasOrNil(), r.now),
		cool:     r.cooldowns,
		capacity: newCapacityPolicy(cfg.Capacity),
		streams:  cfg.Streams,
	}
	if old != nil && old.snap.Config.Cache == cfg.Cache {
		t.cache = old.cache // keep the entries
	} else {
		t.cache = cache.New(cache.Config(cfg.Cache), r.opts.Fleet, cache.WithClock(r.now), cache.WithLogger(r.log))
	}
	add := func(bc regions.Backend, region string, fallback bool) (*backend, error) {
		bp := cfg.Breaker
		if bc.Breaker != nil {
			bp = *bc.Breaker
		}
		b := &backend{
			cfg: bc, region: region, fallback: fallback, kind: kindOf(bc.Kind),
			br: r.breakers.Get(bc.Name, breakerSettings(bp)),
		}
		b.servedBy = &detourv1.ServedBy{Region: region, Backend: bc.Name, Kind: b.kind, Zone: bc.Zone}
		if prev := old.backend(bc.Name); prev != nil && prev.live.id == idOf(bc) {
			b.live = prev.live
			b.lim.SetSettings(t.capacity.limiterSettings(bc))
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
			b.live = &live{id: idOf(bc), prov: p, m: m,
				lim: capacity.New(t.capacity.limiterSettings(bc), r.opts.CapacityOptions...)}
			r.seed(b.live.lim, bc.Name)
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
