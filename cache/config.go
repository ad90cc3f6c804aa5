package cache

import (
	"errors"
	"fmt"
	"time"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Defaults for the zero fields of Config.
const (
	DefaultTTL             = 5 * time.Minute
	DefaultMaxTTL          = 24 * time.Hour
	DefaultStaleWindow     = time.Hour
	DefaultMaxBytes        = 64 << 20
	DefaultMaxEntryBytes   = 1 << 20
	DefaultRedisTimeout    = 20 * time.Millisecond
	DefaultCoalesceTimeout = 2 * time.Minute
)

// Config is the cache policy. The zero value caches deterministic requests
// (temperature 0) for 5 minutes, keeps them an hour longer for stale-if-error,
// in at most 64 MiB of memory, and in Redis too when the fleet has one.
type Config struct {
	// Disabled turns the cache off: nothing is looked up, stored or
	// coalesced.
	Disabled bool `yaml:"disabled,omitempty" json:"disabled,omitempty"`
	// TTL is how long a stored answer is fresh. Zero means 5m.
	TTL time.Duration `yaml:"ttl,omitempty" json:"ttl,omitempty"`
	// MaxTTL caps the ttl hint of a request. Zero means 24h.
	MaxTTL time.Duration `yaml:"max_ttl,omitempty" json:"max_ttl,omitempty"`
	// StaleWindow is how long past its TTL an answer is kept, to be served
	// (marked STALE_CACHE) only when every backend and fallback failed. Zero
	// means 1h; a negative value means no stale answers.
	StaleWindow time.Duration `yaml:"stale_window,omitempty" json:"stale_window,omitempty"`
	// Deterministic says the backends answer deterministically when a
	// request sets no temperature (e.g. self-hosted models with greedy
	// decoding), so such requests are cached too. False caches only requests
	// that set temperature 0, and those with the force_cache hint.
	Deterministic bool `yaml:"deterministic,omitempty" json:"deterministic,omitempty"`
	// Scope says whose answers a request may get: "tenant" keys every
	// answer on the caller's tenant (the authenticated identity), so no
	// tenant reads another's; "shared" shares answers between tenants (the
	// answer depends on the prompt, not on who sent it). Empty means tenant
	// when authentication is on and shared when it is off (then the tenant
	// is only what a caller claims).
	Scope string `yaml:"scope,omitempty" json:"scope,omitempty"`
	// PerUser makes the request's user field part of the key too (with the
	// tenant: one tenant's end-user ids never reach another's answers), so
	// that answers are never shared between end users. False shares them
	// within the scope.
	PerUser bool `yaml:"per_user,omitempty" json:"per_user,omitempty"`
	// MaxBytes bounds the memory of the local tier (encoded answers and
	// keys). Zero means 64 MiB; a negative value means no local tier.
	MaxBytes int64 `yaml:"max_bytes,omitempty" json:"max_bytes,omitempty"`
	// MaxEntryBytes is the largest answer (encoded) that is cached. Zero
	// means 1 MiB.
	MaxEntryBytes int `yaml:"max_entry_bytes,omitempty" json:"max_entry_bytes,omitempty"`
	// LocalOnly keeps answers out of Redis even when the fleet has one.
	LocalOnly bool `yaml:"local_only,omitempty" json:"local_only,omitempty"`
	// RedisTimeout bounds one read or write of the Redis tier. Zero means
	// 20ms.
	RedisTimeout time.Duration `yaml:"redis_timeout,omitempty" json:"redis_timeout,omitempty"`
	// CoalesceTimeout bounds the one upstream call made for identical
	// concurrent requests; it is cancelled sooner when every caller waiting
	// for it has gone. Zero means 2m.
	CoalesceTimeout time.Duration `yaml:"coalesce_timeout,omitempty" json:"coalesce_timeout,omitempty"`
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

func (c Config) ttl() time.Duration    { return orDefault(c.TTL, DefaultTTL) }
func (c Config) maxTTL() time.Duration { return orDefault(c.MaxTTL, DefaultMaxTTL) }
func (c Config) staleWindow() time.Duration {
	return max(0, orDefault(c.StaleWindow, DefaultStaleWindow))
}
func (c Config) maxBytes() int64             { return orDefault(c.MaxBytes, DefaultMaxBytes) }
func (c Config) maxEntryBytes() int          { return orDefault(c.MaxEntryBytes, DefaultMaxEntryBytes) }
func (c Config) redisTimeout() time.Duration { return orDefault(c.RedisTimeout, DefaultRedisTimeout) }
func (c Config) coalesceTimeout() time.Duration {
	return orDefault(c.CoalesceTimeout, DefaultCoalesceTimeout)
}

// Cache scopes (Config.Scope).
const (
	ScopeTenant = "tenant"
	ScopeShared = "shared"
)

// Caller is who a request comes from, as the cache scopes answers.
type Caller struct {
	// Tenant is the caller's tenant.
	Tenant string
	// Authenticated says the tenant was proven (a token or a certificate),
	// not only claimed; it decides the default scope.
	Authenticated bool
}

// Plan is the cache's decision for one request, made once by Cache.Plan and
// passed to the other methods.
type Plan struct {
	// Key is the request's canonical key (zero when not Cacheable).
	Key Key
	// Cacheable reports that the answer may come from and go to the cache,
	// and that identical concurrent requests share one upstream call.
	Cacheable bool
	// Reason says why the request is not Cacheable ("disabled", "no_cache",
	// "nondeterministic"), for logs and metrics; empty when it is.
	Reason string
	// TTL is how long an answer stored for this request stays fresh:
	// Config.TTL, or in the tenant scope the request's ttl hint (capped at
	// Config.MaxTTL).
	TTL time.Duration
	// MaxAge, when positive, is the oldest answer this request takes as
	// fresh: in the shared scope a ttl hint bounds what its own caller
	// reads and never the freshness of what others read.
	MaxAge time.Duration
	// Route encodes the routing hints that change which answers a request
	// may get (routing.prefer_region and routing.no_fallback): identical
	// requests with different ones never share an upstream call.
	Route string
	// Tenant is the caller's tenant: identical requests share an upstream
	// call only within one tenant, whatever the scope of the answers.
	Tenant string
	// MaxStale is how far past its TTL a stale answer may be for this
	// request: the smaller of the request's max_stale hint and
	// Config.StaleWindow. Zero means no stale answer.
	MaxStale time.Duration
}

// Plan decides how the cache treats req:
//
//   - no_cache: not cached at all (no lookup, no store, no coalescing);
//   - force_cache: cached whatever the sampling parameters;
//   - otherwise cached only when deterministic: temperature set to 0, or
//     unset when Config.Deterministic says the backends default to
//     deterministic answers.
//
// The key is scoped to the caller (see Config.Scope). In the tenant scope
// the ttl hint replaces Config.TTL for the answer this request stores; in
// the shared scope it only bounds the age of the answer this request takes
// (HTTP's max-age), so one tenant cannot set the freshness others get. The
// max_stale hint narrows the stale window this request accepts (like HTTP's
// max-stale, it bounds how long past its TTL an answer may be).
func (c *Cache) Plan(req *detourv1.CompleteRequest, who Caller) Plan {
	cfg := &c.cfg
	hints := req.GetCache()
	switch {
	case cfg.Disabled:
		return Plan{Reason: "disabled"}
	case hints.GetNoCache():
		return Plan{Reason: "no_cache"}
	case hints.GetForceCache():
	case req.Temperature != nil && *req.Temperature == 0:
	case req.Temperature == nil && cfg.Deterministic:
	default:
		return Plan{Reason: "nondeterministic"}
	}
	scoped := cfg.Scope == ScopeTenant || (cfg.Scope == "" && who.Authenticated)
	tenant := ""
	if scoped || cfg.PerUser {
		// per_user keys on the end user within the tenant: one tenant's
		// user ids never reach another tenant's answers.
		tenant = who.Tenant
	}
	p := Plan{Key: KeyOf(req, tenant, cfg.PerUser), Cacheable: true, TTL: cfg.ttl(), MaxStale: cfg.staleWindow(),
		Route: routeOf(req.GetRouting()), Tenant: who.Tenant}
	if d := hints.GetTtl().AsDuration(); d > 0 {
		if scoped {
			p.TTL = min(d, cfg.maxTTL())
		} else if d < p.TTL {
			p.MaxAge = d
		}
	}
	if d := hints.GetMaxStale().AsDuration(); d > 0 {
		p.MaxStale = min(d, p.MaxStale)
	}
	return p
}

// Validate reports every problem with c, joined (errors.Join), or nil.
func (c Config) Validate() error {
	var errs []error
	neg := func(name string, bad bool) {
		if bad {
			errs = append(errs, fmt.Errorf("cache.%s must be >= 0", name))
		}
	}
	neg("ttl", c.TTL < 0)
	neg("max_ttl", c.MaxTTL < 0)
	neg("max_entry_bytes", c.MaxEntryBytes < 0)
	neg("redis_timeout", c.RedisTimeout < 0)
	neg("coalesce_timeout", c.CoalesceTimeout < 0)
	if c.TTL > 0 && c.MaxTTL > 0 && c.TTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("cache.ttl %v exceeds cache.max_ttl %v", c.TTL, c.MaxTTL))
	}
	if c.Scope != "" && c.Scope != ScopeTenant && c.Scope != ScopeShared {
		errs = append(errs, fmt.Errorf("cache.scope %q must be %q or %q", c.Scope, ScopeTenant, ScopeShared))
	}
	return errors.Join(errs...)
}

// routeOf encodes the routing hints that change which answers a request may
// get.
func routeOf(h *detourv1.RoutingHints) string {
	if h == nil || (h.GetPreferRegion() == "" && !h.GetNoFallback()) {
		return ""
	}
	nf := "0"
	if h.GetNoFallback() {
		nf = "1"
	}
	return nf + h.GetPreferRegion()
}
