package router

import (
	"cmp"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/detour-dev/detour/regions"
)

// maxUnknownTenants bounds the quotas kept for tenants the config does not
// list; beyond it they share one quota.
const maxUnknownTenants = 1024

// quotas are the per-tenant call quotas of one config. Listed tenants have
// their own qps; others get limits.tenant_qps each. Safe for concurrent use.
type quotas struct {
	now   func() time.Time
	known map[string]*rate.Limiter // immutable after newQuotas
	other *otherQuotas             // nil when unlisted tenants have no quota
}

// otherQuotas keeps one quota per unlisted tenant, up to maxUnknownTenants,
// then one shared quota. It outlives a reload that keeps limits.tenant_qps.
type otherQuotas struct {
	qps      float64
	mu       sync.Mutex
	m        map[string]*rate.Limiter
	overflow *rate.Limiter
}

func newLimiter(qps float64, burst int) *rate.Limiter {
	if burst == 0 {
		burst = max(1, int(math.Ceil(qps)))
	}
	return rate.NewLimiter(rate.Limit(qps), burst)
}

func newQuotas(cfg *regions.Config, old *quotas, now func() time.Time) *quotas {
	q := &quotas{now: now, known: map[string]*rate.Limiter{}}
	def := cfg.Limits.TenantQPS
	for _, t := range cfg.Tenants {
		qps := cmp.Or(t.QPS, def)
		if qps == 0 {
			continue
		}
		l := newLimiter(qps, t.Burst)
		// Keep the bucket (and its spent tokens) when the quota is unchanged.
		if old != nil {
			if prev := old.known[t.Name]; prev != nil && prev.Limit() == l.Limit() && prev.Burst() == l.Burst() {
				l = prev
			}
		}
		q.known[t.Name] = l
	}
	if def > 0 {
		if old != nil && old.other != nil && old.other.qps == def {
			q.other = old.other
		} else {
			q.other = &otherQuotas{qps: def, m: map[string]*rate.Limiter{}, overflow: newLimiter(def, 0)}
		}
	}
	return q
}

// limiter returns the tenant's quota and its metrics label, or nil when the
// tenant has none.
func (q *quotas) limiter(tenant string) (*rate.Limiter, string) {
	if l, ok := q.known[tenant]; ok {
		return l, tenant
	}
	o := q.other
	if o == nil {
		return nil, ""
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	l := o.m[tenant]
	if l == nil {
		if len(o.m) >= maxUnknownTenants {
			return o.overflow, "other"
		}
		l = newLimiter(o.qps, 0)
		o.m[tenant] = l
	}
	return l, "other"
}

// allow charges one call to the tenant's quota. When over quota it returns
// false with the wait until the next call would fit, and the tenant label to
// record it under.
func (q *quotas) allow(tenant string) (bool, time.Duration, string) {
	l, label := q.limiter(tenant)
	if l == nil {
		return true, 0, ""
	}
	if l.AllowN(q.now(), 1) {
		return true, 0, label
	}
	wait := time.Duration(float64(time.Second) / float64(l.Limit()))
	return false, max(wait, time.Millisecond), label
}
