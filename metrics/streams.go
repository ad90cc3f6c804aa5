package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// streamMetrics are the collectors of streams that survive: first tokens,
// hedged starts, continuations and truncations.
type streamMetrics struct {
	firstToken    *prometheus.HistogramVec
	hedges        *prometheus.CounterVec
	continuations *prometheus.CounterVec
	truncations   *prometheus.CounterVec
}

func newStreamMetrics(register func(prometheus.Collector)) *streamMetrics {
	s := &streamMetrics{
		firstToken: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "detour_first_token_seconds",
			Help:    "Time from the start of a stream attempt to its first token (content, reasoning or a tool call), per backend.",
			Buckets: latencyBuckets}, []string{"backend"}),
		hedges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_stream_hedges_total",
			Help: "Hedged stream starts: started (a second attempt began because the first sent no token within the hedge delay) and won (the second attempt's token came first)."},
			[]string{"result"}),
		continuations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_stream_continuations_total",
			Help: "Broken streams continued on another backend: attempted (a continuation attempt began) and succeeded (the stream finished after one or more)."},
			[]string{"result"}),
		truncations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "detour_stream_truncations_total",
			Help: "Upstream streams that ended without a finish reason after they started (cut, or closed without [DONE]), per backend."},
			[]string{"backend"}),
	}
	for _, c := range []prometheus.Collector{s.firstToken, s.hedges, s.continuations, s.truncations} {
		register(c)
	}
	return s
}

// FirstToken records a stream attempt's time to its first token.
func (b *Backend) FirstToken(d time.Duration) {
	if b != nil {
		b.firstToken.Observe(d.Seconds())
	}
}

// Truncated records a stream of the backend that ended without a finish
// reason after it started.
func (b *Backend) Truncated() {
	if b != nil {
		b.truncated.Inc()
	}
}

// Hedge records a hedged stream start (won false) or a hedge that won.
func (m *Metrics) Hedge(won bool) {
	if m == nil {
		return
	}
	if won {
		m.streams.hedges.WithLabelValues("won").Inc()
	} else {
		m.streams.hedges.WithLabelValues("started").Inc()
	}
}

// Continuation records a continuation attempt (succeeded false) or a stream
// that finished after one or more.
func (m *Metrics) Continuation(succeeded bool) {
	if m == nil {
		return
	}
	if succeeded {
		m.streams.continuations.WithLabelValues("succeeded").Inc()
	} else {
		m.streams.continuations.WithLabelValues("attempted").Inc()
	}
}
