package router

import (
	"errors"
	"fmt"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/capacity"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// ErrUnknownBackend is returned for a backend name the applied config lacks.
var ErrUnknownBackend = errors.New("unknown backend")

// BackendState is one backend's live state as the Admin service reports it.
type BackendState struct {
	Name     string
	Region   string // "fallback" for fallback providers
	Zone     string
	Kind     detourv1.ProviderKind
	Fallback bool
	Drained  bool
	Breaker  breaker.State
	// OpenUntil is when the backend takes calls again while its breaker,
	// or the fleet's shared cooldown, holds it open; zero otherwise.
	OpenUntil time.Time
	// SharedCooldown says OpenUntil comes from another replica's breaker
	// (through Redis) rather than this one's.
	SharedCooldown bool
	InFlight       int64
	Capacity       capacity.Stats
}

// Budget is the retry budget's state: extra upstream calls spent and allowed
// in its window.
type Budget struct {
	Spent, Allowed float64
}

// Budget reports the retry budget's state now.
func (r *Router) Budget() Budget {
	s, a := r.budget.stats()
	return Budget{Spent: s, Allowed: a}
}

// Backends reports every backend of the applied config: primaries in routing
// order, then fallbacks.
func (r *Router) Backends() []BackendState {
	t := r.tab.Load()
	var out []BackendState
	now := r.now()
	add := func(b *backend) {
		st := BackendState{
			Name: b.cfg.Name, Region: b.region, Zone: b.cfg.Zone, Kind: b.kind, Fallback: b.fallback,
			Drained: b.drained.Load(), Breaker: b.br.State(), InFlight: b.inflight.Load(), Capacity: b.lim.Stats(),
			OpenUntil: b.br.OpenUntil(),
		}
		if shared := t.cool.OpenUntil(b.cfg.Name); shared.After(now) && shared.After(st.OpenUntil) {
			st.OpenUntil, st.SharedCooldown = shared, true
		}
		out = append(out, st)
	}
	for _, g := range t.groups {
		for _, b := range g.backends {
			add(b)
		}
	}
	for _, b := range t.fallbacks {
		add(b)
	}
	return out
}

// SetDrained drains (no new calls; in-flight calls finish) or undrains the
// named backend until the next Apply, which sets drained from the config.
// Undraining also resets its breaker and the fleet's cooldown for it: a
// backend taken out for repair comes back with a clean slate.
func (r *Router) SetDrained(name string, drained bool) error {
	b := r.tab.Load().byName[name]
	if b == nil {
		return fmt.Errorf("%w %q", ErrUnknownBackend, name)
	}
	was := b.drained.Swap(drained)
	if was && !drained {
		r.resetBreaker(b)
	}
	return nil
}

// ResetBreaker closes the named backend's breaker at once and clears the
// fleet's shared cooldown for it, and forgets its recent busy share (an
// operator who knows the backend is back).
// It reports whether the breaker was open or half-open.
func (r *Router) ResetBreaker(name string) (bool, error) {
	b := r.tab.Load().byName[name]
	if b == nil {
		return false, fmt.Errorf("%w %q", ErrUnknownBackend, name)
	}
	return r.resetBreaker(b), nil
}

func (r *Router) resetBreaker(b *backend) bool {
	was := b.br.Reset()
	b.lim.ForgetShare()
	shared := !r.cooldowns.OpenUntil(b.cfg.Name).IsZero()
	r.cooldowns.Clear(b.cfg.Name)
	return was || shared
}
