package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// spendMetrics are the token and spend series (package spend records
// them): what upstream calls spent per backend, model and tenant, what the
// cache and shared calls saved, the calls token limits refused, and each
// tenant's budget.
type spendMetrics struct {
	tokens      *prometheus.CounterVec
	cost        *prometheus.CounterVec
	savedTokens *prometheus.CounterVec
	savings     *prometheus.CounterVec
	rejects     *prometheus.CounterVec
	series      sync.Map // spendKey -> *spendSeries
	budgets     atomic.Pointer[func() []Budget]
}

// tokenKinds are the kind label values of detour_tokens_total, in the
// order of spendSeries.tokens.
var tokenKinds = [5]string{"prompt", "completion", "prompt_cache_hit", "prompt_cache_miss", "reasoning"}

var (
	budgetUsedDesc = prometheus.NewDesc("detour_budget_used",
		"What the tenant spent in its budget's current period (tokens, or money in the unit label's currency), as this replica knows it: the fleet's count in Redis as of its last sync (amounts reserved by replicas included), or its own without Redis.",
		[]string{"tenant", "period", "unit"}, nil)
	budgetLimitDesc = prometheus.NewDesc("detour_budget_limit",
		"The tenant's budget for its current period (spend.tenants[].budget, spend.others.budget), in the unit label's unit.",
		[]string{"tenant", "period", "unit"}, nil)
)

func (m *Metrics) newSpend(register func(prometheus.Collector)) {
	s := &m.spend
	s.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_tokens_total",
		Help: "Tokens upstream calls spent (live and fallback answers; once per upstream call, however many callers shared it), as the providers reported them, per backend, model, tenant and kind (prompt, completion, prompt_cache_hit, prompt_cache_miss, reasoning)."},
		[]string{"backend", "model", "tenant", "kind"})
	s.cost = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_spend_total",
		Help: "Money upstream calls cost at the config's prices (spend.prices), in the currency label's unit, per backend, model and tenant."},
		[]string{"backend", "model", "tenant", "currency"})
	s.savedTokens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_tokens_saved_total",
		Help: "Tokens (prompt and completion) of answers served without an upstream call of their own: cache hits, and callers that joined another caller's identical call."},
		[]string{"backend", "model", "tenant"})
	s.savings = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_savings_total",
		Help: "What those answers would have cost at the config's prices, in the currency label's unit."},
		[]string{"backend", "model", "tenant", "currency"})
	s.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_spend_rejections_total",
		Help: "Calls refused because the tenant was over its token rate (limit tpm) or had spent its budget (limit budget)."},
		[]string{"tenant", "limit"})
	for _, c := range []prometheus.Collector{s.tokens, s.cost, s.savedTokens, s.savings, s.rejects, budgetCollector{m}} {
		register(c)
	}
}

// SpendTokens are the token counts of one answer.
type SpendTokens struct {
	Prompt, Completion, CacheHit, CacheMiss, Reasoning int64
}

// spendKey names the series of one backend, model, tenant and currency.
type spendKey struct{ backend, model, tenant, currency string }

// spendSeries are those series, resolved once per key so that a call does
// no label hashing; keys are bounded by the config (backends, models and
// tenants it names, the rest as "other").
type spendSeries struct {
	tokens               [len(tokenKinds)]prometheus.Counter
	cost, saved, savings prometheus.Counter
}

func (m *Metrics) spendSeriesFor(backend, model, tenant, currency string) *spendSeries {
	s := &m.spend
	k := spendKey{backend, model, tenant, currency}
	if v, ok := s.series.Load(k); ok {
		return v.(*spendSeries)
	}
	ss := &spendSeries{
		cost:    s.cost.WithLabelValues(backend, model, tenant, currency),
		saved:   s.savedTokens.WithLabelValues(backend, model, tenant),
		savings: s.savings.WithLabelValues(backend, model, tenant, currency),
	}
	for i, kind := range tokenKinds {
		ss.tokens[i] = s.tokens.WithLabelValues(backend, model, tenant, kind)
	}
	v, _ := s.series.LoadOrStore(k, ss)
	return v.(*spendSeries)
}

// Spent records the tokens of one upstream call and what they cost. The
// labels must be bounded by the config (package spend maps the rest to
// "other").
func (m *Metrics) Spent(backend, model, tenant, currency string, t SpendTokens, cost float64) {
	if m == nil {
		return
	}
	ss := m.spendSeriesFor(backend, model, tenant, currency)
	for i, n := range [len(tokenKinds)]int64{t.Prompt, t.Completion, t.CacheHit, t.CacheMiss, t.Reasoning} {
		if n > 0 {
			ss.tokens[i].Add(float64(n))
		}
	}
	if cost > 0 {
		ss.cost.Add(cost)
	}
}

// Saved records an answer served without an upstream call of its own:
// its tokens, and what they would have cost.
func (m *Metrics) Saved(backend, model, tenant, currency string, tokens int64, cost float64) {
	if m == nil {
		return
	}
	ss := m.spendSeriesFor(backend, model, tenant, currency)
	if tokens > 0 {
		ss.saved.Add(float64(tokens))
	}
	if cost > 0 {
		ss.savings.Add(cost)
	}
}

// SpendRejected records a call refused by a tenant's token limit: limit
// is "tpm" or "budget".
func (m *Metrics) SpendRejected(tenant, limit string) {
	if m != nil {
		m.spend.rejects.WithLabelValues(tenant, limit).Inc()
	}
}

// Budget is one tenant's budget now, as the budget gauges report it.
type Budget struct {
	Tenant, Period, Unit string
	Used, Limit          float64
}

// BudgetSource sets the function the budget gauges (detour_budget_used,
// detour_budget_limit) read at scrape time. It must be safe for concurrent
// use and must not block long.
func (m *Metrics) BudgetSource(f func() []Budget) {
	if m != nil {
		m.spend.budgets.Store(&f)
	}
}

// forgetSpend removes a removed backend's token and spend series.
func (m *Metrics) forgetSpend(backend string) {
	s := &m.spend
	for _, v := range []*prometheus.CounterVec{s.tokens, s.cost, s.savedTokens, s.savings} {
		v.DeletePartialMatch(prometheus.Labels{"backend": backend})
	}
	s.series.Range(func(k, _ any) bool {
		if k.(spendKey).backend == backend {
			s.series.Delete(k)
		}
		return true
	})
}

// budgetCollector reads the budgets at scrape time.
type budgetCollector struct{ m *Metrics }

func (c budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- budgetUsedDesc
	ch <- budgetLimitDesc
}

func (c budgetCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.spend.budgets.Load()
	if f == nil {
		return
	}
	for _, b := range (*f)() {
		ch <- prometheus.MustNewConstMetric(budgetUsedDesc, prometheus.GaugeValue, b.Used, b.Tenant, b.Period, b.Unit)
		ch <- prometheus.MustNewConstMetric(budgetLimitDesc, prometheus.GaugeValue, b.Limit, b.Tenant, b.Period, b.Unit)
	}
}
