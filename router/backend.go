package router

import (
	"context"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/capacity"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
)

// Provider calls one upstream backend. Implementations are safe for
// concurrent use and return promptly when ctx ends.
type Provider interface {
	Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error)
	Stream(ctx context.Context, req *detourv1.CompleteRequest) (ChunkStream, error)
}

// ChunkStream is one streamed answer: Recv returns io.EOF after the last
// chunk of a complete stream; Close may be called at any time, more than once.
// It is an alias so that provider's clients satisfy Provider as they are.
type ChunkStream = provider.ChunkStream

// backend is one upstream as one config document describes it. It is
// immutable but for drained; the state that must survive a reload that keeps
// the backend's connection (client, in-flight count, load, limiter) lives in
// the shared *live.
type backend struct {
	*live
	cfg      regions.Backend
	region   string
	fallback bool
	kind     detourv1.ProviderKind
	servedBy *detourv1.ServedBy // shared by answers; never modified
	br       *breaker.Breaker
	drained  atomic.Bool
}

// live is a backend's connection, counters and learned capacity. Reloads
// that keep a backend's name, kind, endpoint, credentials and TLS settings
// keep its live state (and connections settings: a change there takes a new
// connection pool).
type live struct {
	id       liveID
	prov     Provider
	m        *metrics.Backend
	lim      *capacity.Limiter
	inflight atomic.Int64
	load     ewma
	removed  atomic.Bool
	closer   sync.Once
	bg       bgAttempts // background attempts in flight, which interactive calls preempt
}

type liveID struct {
	name, kind, endpoint, keyEnv, keyFile string
	tls                                   regions.BackendTLS
	hasTLS                                bool
	conns                                 regions.BackendConnections // zero without a connections block
}

func idOf(b regions.Backend) liveID {
	id := liveID{name: b.Name, kind: b.Kind, endpoint: b.Endpoint, keyEnv: b.APIKeyEnv, keyFile: b.APIKeyFile}
	if b.TLS != nil {
		id.tls, id.hasTLS = *b.TLS, true
	}
	if b.Connections != nil {
		id.conns = *b.Connections
	}
	return id
}

// hold counts one call in flight on the backend.
func (l *live) hold() {
	l.inflight.Add(1)
	l.m.Inflight(1)
}

// release ends one call; the last call on a removed backend closes its client.
func (l *live) release() {
	l.m.Inflight(-1)
	if l.inflight.Add(-1) == 0 && l.removed.Load() {
		l.close()
	}
}

func (l *live) retire() {
	l.removed.Store(true)
	if l.inflight.Load() == 0 {
		l.close()
	}
}

func (l *live) close() {
	l.closer.Do(func() {
		if c, ok := l.prov.(io.Closer); ok {
			c.Close()
		}
	})
}

func kindOf(k string) detourv1.ProviderKind {
	if k == regions.KindDetour {
		return detourv1.ProviderKind_PROVIDER_KIND_DETOUR
	}
	return detourv1.ProviderKind_PROVIDER_KIND_OPENAI
}

// ewma is a backend's recent cost in seconds, decaying with time so old
// observations fade: Finagle's and Linkerd's peak-EWMA idea. Busy and failed
// answers are recorded as a large cost, so a backend that answers 429/503
// quickly does not look fast to the balancer.
type ewma struct {
	mu    sync.Mutex
	value float64 // seconds
	at    int64   // unix nanos of the last observation
}

const (
	ewmaDecay   = 5 * time.Second        // time constant of the decay
	busyPenalty = 500 * time.Millisecond // cost recorded for a busy or failed answer
)

func (e *ewma) observe(now time.Time, cost time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ns := now.UnixNano()
	c := cost.Seconds()
	if e.at == 0 {
		e.value, e.at = c, ns
		return
	}
	w := math.Exp(-float64(ns-e.at) / float64(ewmaDecay))
	if c > e.value {
		// Peak sensitivity: a worse observation counts at once.
		w = 0
	}
	e.value = e.value*w + c*(1-w)
	e.at = ns
}

// get returns the cost decayed to now, so that a backend penalized once and
// then left idle regains traffic.
func (e *ewma) get(now time.Time) float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.at == 0 {
		return 0
	}
	return e.value * math.Exp(-float64(now.UnixNano()-e.at)/float64(ewmaDecay))
}
