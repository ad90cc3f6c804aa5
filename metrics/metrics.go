// Package metrics defines detour's Prometheus metrics in one place. Every
// name has the detour_ prefix and base units; labels are bounded by config
// (backend, region, tenant names) or by fixed sets (method, code, source,
// outcome).
//
// A nil *Metrics and a nil *Backend are valid and record nothing, so tests
// and embedders that do not care about metrics pass nil.
package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every collector. It is safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	calls        *prometheus.CounterVec
	shed         *prometheus.CounterVec
	callDuration *prometheus.HistogramVec
	firstChunk   prometheus.Histogram
	overhead     *prometheus.HistogramVec
	callSeries   sync.Map // callKey -> *callSeries
	attempts     *prometheus.CounterVec
	upstreamDur  *prometheus.HistogramVec
	breakerState *prometheus.GaugeVec
	breakerTrans *prometheus.CounterVec
	retries      prometheus.Counter
	budgetOut    prometheus.Counter
	panics       *prometheus.CounterVec
	limitRejects *prometheus.CounterVec
	quotaRejects *prometheus.CounterVec
	inflight     *prometheus.GaugeVec
	conns        *prometheus.CounterVec
	cache        *prometheus.CounterVec
	spend        spendMetrics // spend.go
	cfgRevision  prometheus.Gauge
	cfgApplies   prometheus.Counter
	cfgRejects   prometheus.Counter
	cfgLKG       prometheus.Gauge
	cfgAppliedAt prometheus.Gauge

	streams *streamMetrics

	// admission is what the in-flight gauges read; see Admission.
	admission atomic.Pointer[admission]
	// capacity is what the capacity gauges read; see CapacitySource.
	capacity atomic.Pointer[func() Capacity]
	// jobs holds the asynchronous jobs' metrics (jobs.go).
	jobs jobMetrics
}

// Capacity is the router's capacity state at one moment, read at scrape
// time.
type Capacity struct {
	Backends []BackendCapacity
	// BudgetSpent and BudgetAllowed are the extra upstream calls spent and
	// allowed in the retry budget's window.
	BudgetSpent, BudgetAllowed float64
}

// BackendCapacity is one backend's learned capacity.
type BackendCapacity struct {
	Backend, Region string
	Limit           float64 // concurrency limit
	InFlight        float64 // calls holding a slot
	Held            float64 // slots held by recent busy answers
	Queued          float64 // calls waiting for a slot
	BusyShare       float64 // recent busy or failed share of answers
	Floor           float64 // busy share not caused by detour's load
}

// CapacitySource sets the function the capacity gauges read at scrape time.
func (m *Metrics) CapacitySource(f func() Capacity) {
	if m != nil {
		m.capacity.Store(&f)
	}
}

var (
	capLimitDesc = prometheus.NewDesc("detour_backend_capacity_limit",
		"The concurrency limit detour has learned for the backend (capacity section).", []string{"backend", "region"}, nil)
	capInflightDesc = prometheus.NewDesc("detour_backend_capacity_inflight",
		"Calls holding a slot of the backend's capacity limit.", []string{"backend", "region"}, nil)
	capHeldDesc = prometheus.NewDesc("detour_backend_capacity_held",
		"Slots held by recent busy answers (a busy answer keeps its slot for about one call's duration).", []string{"backend", "region"}, nil)
	capQueuedDesc = prometheus.NewDesc("detour_backend_capacity_queued",
		"Calls waiting for a slot on the backend.", []string{"backend", "region"}, nil)
	busyShareDesc = prometheus.NewDesc("detour_backend_busy_share",
		"Recent share of the backend's answers that were busy or failed.", []string{"backend", "region"}, nil)
	busyFloorDesc = prometheus.NewDesc("detour_backend_busy_floor",
		"The share of busy answers detour has learned the backend gives whatever its load (not caused by detour).", []string{"backend", "region"}, nil)
	budgetSpentDesc = prometheus.NewDesc("detour_retry_budget_spent",
		"Extra upstream calls (retries, hedges, attempts past open breakers) spent in the retry budget's 10 s window.", nil, nil)
	budgetAllowedDesc = prometheus.NewDesc("detour_retry_budget_allowed",
		"Extra upstream calls the retry budget allows in its 10 s window.", nil, nil)
)

// capacityCollector reads the capacity state at scrape time.
type capacityCollector struct{ m *Metrics }

func (c capacityCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{capLimitDesc, capInflightDesc, capHeldDesc, capQueuedDesc, busyShareDesc, busyFloorDesc, budgetSpentDesc, budgetAllowedDesc} {
		ch <- d
	}
}

func (c capacityCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.capacity.Load()
	if f == nil {
		return
	}
	st := (*f)()
	for _, b := range st.Backends {
		for _, v := range []struct {
			d *prometheus.Desc
			x float64
		}{{capLimitDesc, b.Limit}, {capInflightDesc, b.InFlight}, {capHeldDesc, b.Held}, {capQueuedDesc, b.Queued},
			{busyShareDesc, b.BusyShare}, {busyFloorDesc, b.Floor}} {
			ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.x, b.Backend, b.Region)
		}
	}
	ch <- prometheus.MustNewConstMetric(budgetSpentDesc, prometheus.GaugeValue, st.BudgetSpent)
	ch <- prometheus.MustNewConstMetric(budgetAllowedDesc, prometheus.GaugeValue, st.BudgetAllowed)
}

type admission struct{ inflight, limit func() int }

// latencyBuckets span a cache hit (sub-millisecond) to a long LLM answer.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// overheadBuckets resolve detour's own time per call.
var overheadBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1}

// New registers every collector, with the Go and process collectors, in a new
// registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{reg: reg}
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_calls_total",
		Help: "Calls answered, by method, gRPC code and source of the answer."}, []string{"method", "code", "source"})
	m.shed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_calls_shed_total",
		Help: "Calls refused with RESOURCE_EXHAUSTED because the replica was at limits.max_inflight (also counted in detour_calls_total)."}, []string{"method"})
	callsInflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "detour_calls_inflight",
		Help: "detour.v1.Router calls (Complete and StreamComplete) this replica runs now."}, func() float64 {
		if a := m.admission.Load(); a != nil {
			return float64(a.inflight())
		}
		return 0
	})
	inflightLimit := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "detour_calls_inflight_limit",
		Help: "The live limits.max_inflight: the most Router calls this replica runs at once (0: no limit)."}, func() float64 {
		if a := m.admission.Load(); a != nil {
			return float64(a.limit())
		}
		return 0
	})
	m.callDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "detour_call_duration_seconds",
		Help: "End-to-end call latency as detour sees it.", Buckets: latencyBuckets}, []string{"method"})
	m.firstChunk = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "detour_first_chunk_seconds",
		Help: "Time from the start of a streamed call to its first chunk.", Buckets: latencyBuckets})
	m.overhead = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "detour_overhead_seconds",
		Help: "Time spent in detour per call, excluding upstream calls and backoff waits.", Buckets: overheadBuckets}, []string{"method"})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_upstream_attempts_total",
		Help: "Upstream attempts by backend and outcome class (ok, busy, failed, client_error, canceled, down)."}, []string{"backend", "region", "outcome"})
	m.upstreamDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "detour_upstream_duration_seconds",
		Help: "Latency of upstream attempts.", Buckets: latencyBuckets}, []string{"backend"})
	m.breakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "detour_breaker_state",
		Help: "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open."}, []string{"backend"})
	m.breakerTrans = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_breaker_transitions_total",
		Help: "Circuit breaker transitions per backend, by the state entered."}, []string{"backend", "to"})
	m.retries = prometheus.NewCounter(prometheus.CounterOpts{Name: "detour_retries_total",
		Help: "Attempts made after a call's first one on primaries."})
	m.budgetOut = prometheus.NewCounter(prometheus.CounterOpts{Name: "detour_retry_budget_exhausted_total",
		Help: "Retries not made because the retry budget was spent."})
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_panic_attempts_total",
		Help: "Attempts sent to a backend whose breaker was open because every candidate was closed (bounded by the retry budget)."}, []string{"backend"})
	m.limitRejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_limit_rejections_total",
		Help: "Backends skipped because they were at their limit (qps or concurrency)."}, []string{"backend", "reason"})
	m.quotaRejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_quota_rejections_total",
		Help: "Calls refused because the tenant was over its quota."}, []string{"tenant"})
	m.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "detour_inflight",
		Help: "Upstream calls in flight per backend."}, []string{"backend"})
	m.conns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_upstream_connections_total",
		Help: "Upstream HTTP connections taken from the pool (reused=true) or dialed (reused=false)."}, []string{"backend", "reused"})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_cache_requests_total",
		Help: "Cache lookups by tier and result (hit, miss, stale)."}, []string{"tier", "result"})
	m.cfgRevision = prometheus.NewGauge(prometheus.GaugeOpts{Name: "detour_config_revision",
		Help: "etcd revision of the applied config document (0 for a file)."})
	m.cfgApplies = prometheus.NewCounter(prometheus.CounterOpts{Name: "detour_config_applies_total",
		Help: "Config documents applied."})
	m.cfgRejects = prometheus.NewCounter(prometheus.CounterOpts{Name: "detour_config_rejections_total",
		Help: "Config documents rejected by validation."})
	m.cfgLKG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "detour_config_last_known_good",
		Help: "1 while serving from the last-known-good file because the config store is unreachable."})
	m.cfgAppliedAt = prometheus.NewGauge(prometheus.GaugeOpts{Name: "detour_config_applied_timestamp_seconds",
		Help: "Unix time the applied config document was applied."})
	for _, c := range []prometheus.Collector{m.calls, m.shed, callsInflight, inflightLimit, m.callDuration, m.firstChunk, m.overhead, m.attempts,
		m.upstreamDur, m.breakerState, m.breakerTrans, m.retries, m.budgetOut, m.panics, capacityCollector{m}, m.limitRejects, m.quotaRejects,
		m.inflight, m.conns, m.cache, m.cfgRevision, m.cfgApplies, m.cfgRejects, m.cfgLKG, m.cfgAppliedAt} {
		f(c)
	}
	m.streams = newStreamMetrics(f)
	m.jobs.register(m, f)
	m.newSpend(f) // spend.go
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Call records one finished call.
func (m *Metrics) Call(method, code, source string, total, overhead time.Duration) {
	if m == nil {
		return
	}
	cs := m.callSeriesFor(method, code, source)
	cs.count.Inc()
	cs.duration.Observe(total.Seconds())
	if overhead >= 0 {
		cs.overhead.Observe(overhead.Seconds())
	}
}

// callKey names the series one finished call records into.
type callKey struct{ method, code, source string }

// callSeries are those series, resolved once per key so that a call does
// no label hashing: there are a few dozen keys (2 methods, the gRPC codes,
// 5 sources).
type callSeries struct {
	count              prometheus.Counter
	duration, overhead prometheus.Observer
}

func (m *Metrics) callSeriesFor(method, code, source string) *callSeries {
	k := callKey{method, code, source}
	if v, ok := m.callSeries.Load(k); ok {
		return v.(*callSeries)
	}
	cs := &callSeries{
		count:    m.calls.WithLabelValues(method, code, source),
		duration: m.callDuration.WithLabelValues(method),
		overhead: m.overhead.WithLabelValues(method),
	}
	v, _ := m.callSeries.LoadOrStore(k, cs)
	return v.(*callSeries)
}

// Shed records a call refused at the in-flight limit before it ran: it is
// counted in detour_calls_shed_total and, as ResourceExhausted with source
// none, in detour_calls_total (so that error ratios see it), but not in the
// duration histograms (it took no time worth recording).
func (m *Metrics) Shed(method string) {
	if m == nil {
		return
	}
	m.shed.WithLabelValues(method).Inc()
	m.calls.WithLabelValues(method, "ResourceExhausted", "none").Inc()
}

// Admission makes detour_calls_inflight and detour_calls_inflight_limit
// read inflight and limit at each scrape. Both must be safe for concurrent
// use and must not block. A later call replaces the earlier functions.
func (m *Metrics) Admission(inflight, limit func() int) {
	if m != nil {
		m.admission.Store(&admission{inflight: inflight, limit: limit})
	}
}

// Redis registers detour_fleet_redis_up and detour_fleet_redis_errors_total,
// read from up and errors at each scrape: whether the Redis the replicas
// share answered its last health check, and how many Redis operations and
// checks failed. Call it once, for a replica that has a Redis; without one
// neither series exists (an absent Redis is not a down one). up and errors
// must be safe for concurrent use and must not block.
func (m *Metrics) Redis(up func() bool, errors func() uint64) {
	if m == nil {
		return
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "detour_fleet_redis_up",
			Help: "1 while the Redis shared by the replicas answers this replica's health checks (a PING a second); 0 while it does not and cache, cooldowns and limits are local."}, func() float64 {
			if up() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "detour_fleet_redis_errors_total",
			Help: "Redis operations and health checks that failed (operations skipped while Redis is left alone after a failure are not counted)."}, func() float64 {
			return float64(errors())
		}),
	)
}

// FirstChunk records the time to the first chunk of a stream.
func (m *Metrics) FirstChunk(d time.Duration) {
	if m == nil {
		return
	}
	m.firstChunk.Observe(d.Seconds())
}

// Retry records a retry; BudgetExhausted a retry the budget refused.
func (m *Metrics) Retry() {
	if m != nil {
		m.retries.Inc()
	}
}

// BudgetExhausted records a retry the budget refused.
func (m *Metrics) BudgetExhausted() {
	if m != nil {
		m.budgetOut.Inc()
	}
}

// Panic records an attempt sent past an open breaker because every
// candidate was closed.
func (m *Metrics) Panic(backend string) {
	if m != nil {
		m.panics.WithLabelValues(backend).Inc()
	}
}

// QuotaRejected records a call refused by the tenant's quota.
func (m *Metrics) QuotaRejected(tenant string) {
	if m != nil {
		m.quotaRejects.WithLabelValues(tenant).Inc()
	}
}

// Cache records a cache lookup.
func (m *Metrics) Cache(tier, result string) {
	if m != nil {
		m.cache.WithLabelValues(tier, result).Inc()
	}
}

// ConfigApplied records an applied config document.
func (m *Metrics) ConfigApplied(revision int64, at time.Time, lastKnownGood bool) {
	if m == nil {
		return
	}
	m.cfgApplies.Inc()
	m.cfgRevision.Set(float64(revision))
	m.cfgAppliedAt.Set(float64(at.UnixNano()) / 1e9)
	if lastKnownGood {
		m.cfgLKG.Set(1)
	} else {
		m.cfgLKG.Set(0)
	}
}

// ConfigRejected records a rejected config document.
func (m *Metrics) ConfigRejected() {
	if m != nil {
		m.cfgRejects.Inc()
	}
}

// BreakerChanged records a breaker transition; state is 0 closed, 1
// half-open, 2 open, and to its name.
func (m *Metrics) BreakerChanged(backend string, state int, to string) {
	if m == nil {
		return
	}
	m.breakerState.WithLabelValues(backend).Set(float64(state))
	m.breakerTrans.WithLabelValues(backend, to).Inc()
}

// Backend is the set of one backend's series, resolved once so the hot path
// does no label lookups. A nil *Backend records nothing.
type Backend struct {
	attempts   [len(outcomes)]prometheus.Counter // by outcome index, see Outcomes
	duration   prometheus.Observer
	inflight   prometheus.Gauge
	limitQPS   prometheus.Counter
	limitConc  prometheus.Counter
	connReused prometheus.Counter
	connDialed prometheus.Counter
	firstToken prometheus.Observer
	truncated  prometheus.Counter
}

// outcomes are the outcome label values, indexed like breaker.Class.
var outcomes = [7]string{"ok", "busy", "failed", "client_error", "canceled", "down", "exhausted"}

// Backend returns the series of one backend.
func (m *Metrics) Backend(name, region string) *Backend {
	if m == nil {
		return nil
	}
	b := &Backend{
		duration:   m.upstreamDur.WithLabelValues(name),
		inflight:   m.inflight.WithLabelValues(name),
		limitQPS:   m.limitRejects.WithLabelValues(name, "qps"),
		limitConc:  m.limitRejects.WithLabelValues(name, "concurrency"),
		connReused: m.conns.WithLabelValues(name, "true"),
		connDialed: m.conns.WithLabelValues(name, "false"),
		firstToken: m.streams.firstToken.WithLabelValues(name),
		truncated:  m.streams.truncations.WithLabelValues(name),
	}
	for i, o := range outcomes {
		b.attempts[i] = m.attempts.WithLabelValues(name, region, o)
	}
	m.breakerState.WithLabelValues(name).Set(0)
	return b
}

// Forget removes a removed backend's series.
func (m *Metrics) Forget(name string) {
	if m == nil {
		return
	}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.attempts, m.upstreamDur, m.breakerState, m.breakerTrans, m.limitRejects, m.inflight, m.conns, m.panics,
		m.streams.firstToken, m.streams.truncations,
	} {
		v.DeletePartialMatch(prometheus.Labels{"backend": name})
	}
	m.forgetSpend(name)
}

// Attempt records one upstream attempt; outcome is a breaker.Class.
func (b *Backend) Attempt(outcome int, d time.Duration) {
	if b == nil {
		return
	}
	if outcome >= 0 && outcome < len(b.attempts) {
		b.attempts[outcome].Inc()
	}
	b.duration.Observe(d.Seconds())
}

// Inflight adds n to the backend's in-flight gauge.
func (b *Backend) Inflight(n float64) {
	if b != nil {
		b.inflight.Add(n)
	}
}

// Limited records the backend skipped at its qps (qps true) or concurrency
// limit.
func (b *Backend) Limited(qps bool) {
	if b == nil {
		return
	}
	if qps {
		b.limitQPS.Inc()
	} else {
		b.limitConc.Inc()
	}
}

// Conn records an upstream connection taken for a request.
func (b *Backend) Conn(reused bool) {
	if b == nil {
		return
	}
	if reused {
		b.connReused.Inc()
	} else {
		b.connDialed.Inc()
	}
}
