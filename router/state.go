package router

import (
	"errors"
	"fmt"

	"github.com/detour-dev/detour/breaker"
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
	InFlight int64
}

// Backends reports every backend of the applied config: primaries in routing
// order, then fallbacks.
func (r *Router) Backends() []BackendState {
	t := r.tab.Load()
	var out []BackendState
	add := func(b *backend) {
		out = append(out, BackendState{
			Name: b.cfg.Name, Region: b.region, Zone: b.cfg.Zone, Kind: b.kind, Fallback: b.fallback,
			Drained: b.drained.Load(), Breaker: b.br.State(), InFlight: b.inflight.Load(),
		})
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
func (r *Router) SetDrained(name string, drained bool) error {
	b := r.tab.Load().byName[name]
	if b == nil {
		return fmt.Errorf("%w %q", ErrUnknownBackend, name)
	}
	b.drained.Store(drained)
	return nil
}
