package router

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/detour-dev/detour/breaker"
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
}

func newPolicy(p regions.RetryPolicy) policy {
	return policy{
		maxAttempts:    orDefault(p.MaxAttempts, regions.DefaultMaxAttempts),
		backoffBase:    orDefault(p.BackoffBase.D(), regions.DefaultBackoffBase),
		backoffMax:     orDefault(p.BackoffMax.D(), regions.DefaultBackoffMax),
		attemptTimeout: orDefault(p.AttemptTimeout.D(), regions.DefaultAttemptTimeout),
	}
}

func orDefault[T cmp.Ordered](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// build derives a table from snap, reusing the unchanged backends of old. It
// returns the backends it created so a failed build can close them.
func build(snap *regions.Snapshot, old *table, newProvider func(regions.Backend) (Provider, error), breakers *breaker.Set) (*table, []*backend, error) {
	if snap == nil || snap.Config == nil {
		return nil, nil, fmt.Errorf("router: no config")
	}
	cfg := snap.Config
	t := &table{
		snap:   snap,
		byName: map[string]*backend{},
		models: map[string]bool{},
		policy: newPolicy(cfg.Retry),
	}
	var fresh []*backend
	add := func(bc regions.Backend, region string, fallback bool) (*backend, error) {
		bp := cfg.Breaker
		if bc.Breaker != nil {
			bp = *bc.Breaker
		}
		b := &backend{cfg: bc, region: region, fallback: fallback, kind: kindOf(bc.Kind), policy: bp}
		if old != nil {
			if prev := old.byName[bc.Name]; prev != nil && sameBackend(prev, b) {
				b = prev
			}
		}
		if b.prov == nil {
			p, err := newProvider(bc)
			if err != nil {
				return nil, fmt.Errorf("backend %s: %w", bc.Name, err)
			}
			b.prov = p
			b.br = breakers.Get(bc.Name, bp)
			fresh = append(fresh, b)
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
func (t *table) pick(model, prefer, avoid, zone string, tried []*backend) *backend {
	if prefer != avoid {
		for _, g := range t.groups {
			if g.name == prefer {
				if b := g.pick(model, zone, tried); b != nil {
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
		if b := g.pick(model, zone, tried); b != nil {
			return b
		}
	}
	for _, g := range t.groups {
		if g.name == avoid && avoid != "" {
			return g.pick(model, zone, tried)
		}
	}
	return nil
}

func (g *group) pick(model, zone string, tried []*backend) *backend {
	var buf [16]*backend
	ok := buf[:0]
	total := 0
	for _, b := range g.backends {
		if b.available(model) && !slices.Contains(tried, b) {
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
	if c.score(zone) < a.score(zone) {
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

// score is lower for a backend that should get the next call: fewer in-flight
// calls per unit of weight, and in the caller's zone.
func (b *backend) score(zone string) float64 {
	s := float64(b.inflight.Load()+1) / float64(b.cfg.EffectiveWeight())
	if zone != "" && b.cfg.Zone != "" && b.cfg.Zone != zone {
		s *= 1.5
	}
	return s
}

func (b *backend) serves(model string) bool {
	return !b.drained.Load() && b.cfg.Serves(model)
}

// available reports whether b may take a new call for model now.
func (b *backend) available(model string) bool {
	return b.serves(model) && b.br.State() != breaker.Open
}
