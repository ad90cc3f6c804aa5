package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// JobStats is the state of the asynchronous jobs (package jobs) at one
// moment, read from the job database at scrape time. Every replica reads the
// same database, so every replica reports the same fleet-wide numbers: sum
// them over tenants, not over replicas (max by tenant, class).
type JobStats struct {
	Groups []JobGroup
}

// JobGroup is the jobs of one tenant and priority class.
type JobGroup struct {
	Tenant, Class string
	// Queued and Running count the jobs waiting for a worker and held by one.
	Queued, Running float64
	// OldestQueued is the age in seconds of the oldest queued job, 0 when
	// none waits.
	OldestQueued float64
}

var (
	jobsQueuedDesc = prometheus.NewDesc("detour_jobs_queued",
		"Asynchronous jobs waiting for a worker (fleet-wide: every replica reports the same value), by tenant and class.", []string{"tenant", "class"}, nil)
	jobsRunningDesc = prometheus.NewDesc("detour_jobs_running",
		"Asynchronous jobs a worker holds (waiting for spare capacity or calling upstream; fleet-wide), by tenant and class.", []string{"tenant", "class"}, nil)
	jobsOldestDesc = prometheus.NewDesc("detour_jobs_oldest_queued_seconds",
		"Age of the oldest queued asynchronous job (fleet-wide), by tenant and class; 0 when none waits.", []string{"tenant", "class"}, nil)
)

// jobMetrics are the metrics of asynchronous jobs.
type jobMetrics struct {
	source    atomic.Pointer[func() JobStats]
	submitted *prometheus.CounterVec
	finished  *prometheus.CounterVec
	deferred  *prometheus.CounterVec
	preempted *prometheus.CounterVec
}

func (j *jobMetrics) register(m *Metrics, f func(prometheus.Collector)) {
	j.submitted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_jobs_submitted_total",
		Help: "Jobs submitted on this replica, by class and result (created, duplicate: the idempotency key named an existing job, refused)."}, []string{"class", "result"})
	j.finished = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_jobs_finished_total",
		Help: "Jobs finished on this replica, by class and outcome (succeeded, failed, canceled, expired)."}, []string{"class", "outcome"})
	j.deferred = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_jobs_deferred_total",
		Help: "Job attempts put off, by reason: no_room (no spare capacity), busy (a busy answer), preempted (gave its slot to an interactive call)."}, []string{"reason"})
	j.preempted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_background_preempted_total",
		Help: "Background (job) attempts cancelled to give their slot to an interactive call, by backend."}, []string{"backend"})
	for _, c := range []prometheus.Collector{j.submitted, j.finished, j.deferred, j.preempted, jobsCollector{m}} {
		f(c)
	}
}

// jobsCollector reads the job gauges at scrape time.
type jobsCollector struct{ m *Metrics }

func (c jobsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- jobsQueuedDesc
	ch <- jobsRunningDesc
	ch <- jobsOldestDesc
}

func (c jobsCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.jobs.source.Load()
	if f == nil {
		return
	}
	for _, g := range (*f)().Groups {
		ch <- prometheus.MustNewConstMetric(jobsQueuedDesc, prometheus.GaugeValue, g.Queued, g.Tenant, g.Class)
		ch <- prometheus.MustNewConstMetric(jobsRunningDesc, prometheus.GaugeValue, g.Running, g.Tenant, g.Class)
		ch <- prometheus.MustNewConstMetric(jobsOldestDesc, prometheus.GaugeValue, g.OldestQueued, g.Tenant, g.Class)
	}
}

// JobsSource sets the function the job gauges read at scrape time. It must
// be quick (a cached reading).
func (m *Metrics) JobsSource(f func() JobStats) {
	if m != nil {
		m.jobs.source.Store(&f)
	}
}

// JobSubmitted records a Submit: result is created, duplicate or refused.
func (m *Metrics) JobSubmitted(class, result string) {
	if m != nil {
		m.jobs.submitted.WithLabelValues(class, result).Inc()
	}
}

// JobFinished records a job that reached a final state on this replica.
func (m *Metrics) JobFinished(class, outcome string) {
	if m != nil {
		m.jobs.finished.WithLabelValues(class, outcome).Inc()
	}
}

// JobDeferred records a job attempt put off: no_room, busy or preempted.
func (m *Metrics) JobDeferred(reason string) {
	if m != nil {
		m.jobs.deferred.WithLabelValues(reason).Inc()
	}
}

// Preempted records a background attempt cancelled for an interactive call.
func (m *Metrics) Preempted(backend string) {
	if m != nil {
		m.jobs.preempted.WithLabelValues(backend).Inc()
	}
}
