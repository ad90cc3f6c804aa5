package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/cache"
	"github.com/detour-dev/detour/capacity"
	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/internal/excerpt"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/spend"
)

// tracer makes one span per upstream attempt; it is a no-op until a tracer
// provider is installed.
var tracer = otel.Tracer("github.com/detour-dev/detour/router")

// Options configure a Router. The zero value is usable.
type Options struct {
	// Region and Zone are where this instance runs; backends of the own region
	// are tried first, and backends of the own zone are preferred within it.
	Region, Zone string
	// NewProvider builds the client for a backend. Nil uses package provider.
	NewProvider func(regions.Backend) (Provider, error)
	// Logger receives routing events. Nil uses slog.Default().
	Logger *slog.Logger
	// Metrics records routing metrics. Nil records nothing.
	Metrics *metrics.Metrics
	// Now is the clock of quotas, the retry budget and the balancer. Nil
	// uses time.Now.
	Now func() time.Time
	// BreakerOptions are passed to every breaker (e.g. a clock for tests).
	BreakerOptions []breaker.Option
	// CapacityOptions are passed to every backend's capacity limit (e.g. a
	// clock for tests).
	CapacityOptions []capacity.Option
	// Fleet is the Redis store shared by the replicas: the cache's shared
	// tier, breaker cooldowns, fleet-wide qps limits and learned capacity
	// limits go through it. Nil keeps all of them local. The caller closes
	// it after the Router.
	Fleet *fleet.Store
	// FleetOptions are passed to the fleet's capacity sharing (e.g. how
	// often it syncs, for tests).
	FleetOptions []fleet.Option
	// AuthenticatedTenants says the tenant in a call's context was proven
	// (authentication is on), not only claimed: the cache then keeps each
	// tenant's answers apart by default (cache.scope).
	AuthenticatedTenants bool
}

// Router routes calls over the backends of the applied snapshot. It is safe
// for concurrent use. Complete and Stream block until an answer, a final
// error, or the end of ctx.
type Router struct {
	opts       Options
	log        *slog.Logger
	now        func() time.Time
	breakers   *breaker.Set
	budget     *budget
	limiter    *fleet.Limiter
	cooldowns  *fleet.Cooldowns
	capacities *fleet.Capacities
	meter      *spend.Meter

	mu     sync.Mutex // serializes Apply and Close
	closed bool
	tab    atomic.Pointer[table]
}

// New returns a Router serving snap.
func New(snap *regions.Snapshot, opts Options) (*Router, error) {
	r := &Router{opts: opts, log: opts.Logger, now: opts.Now}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.limiter = fleet.NewLimiter(opts.Fleet, 0, fleet.WithClock(r.now), fleet.WithLogger(r.log))
	r.cooldowns = fleet.NewCooldowns(opts.Fleet, fleet.WithClock(r.now), fleet.WithLogger(r.log))
	r.capacities = fleet.NewCapacities(opts.Fleet, r.learnedLimits, r.seedAll,
		append([]fleet.Option{fleet.WithClock(r.now)}, opts.FleetOptions...)...)
	r.breakers = breaker.NewSet(append([]breaker.Option{breaker.WithOnChange(r.breakerChanged), breaker.WithOnExtend(r.breakerExtended)}, opts.BreakerOptions...)...)
	r.budget = newBudget(r.now)
	if snap != nil && snap.Config != nil {
		r.meter = spend.New(opts.Fleet, snap.Config, spend.WithClock(r.now), spend.WithMetrics(opts.Metrics), spend.WithLogger(r.log))
	}
	if err := r.Apply(snap); err != nil {
		if r.meter != nil {
			r.meter.Close()
		}
		r.limiter.Close()
		r.cooldowns.Close()
		r.capacities.Close()
		return nil, err
	}
	opts.Metrics.CapacitySource(r.capacityMetrics)
	return r, nil
}

// newProvider builds the client of the backend's kind, reporting pool use to
// m.
func newProvider(b regions.Backend, m *metrics.Backend) (Provider, error) {
	if b.Kind == regions.KindDetour {
		return provider.NewDetour(b)
	}
	if m == nil {
		return provider.NewOpenAI(b)
	}
	return provider.NewOpenAI(b, provider.WithConnReport(m.Conn))
}

// Apply makes snap the routing table. Backends whose name, kind, endpoint and
// credentials are unchanged keep their client and counters, and their breaker
// while its policy is unchanged; removed backends take no new calls and are
// closed when their in-flight calls end. On error nothing changes.
func (r *Router) Apply(snap *regions.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("router is closed")
	}
	old := r.tab.Load()
	t, fresh, err := build(snap, old, r)
	if err != nil {
		for _, l := range fresh {
			l.close()
		}
		return err
	}
	r.budget.setPolicy(t.policy.budgetRatio, t.policy.budgetFloor)
	r.meter.Apply(snap.Config)
	r.tab.Store(t)
	r.breakers.Retain(slices.Collect(maps.Keys(t.byName)))
	if old != nil {
		for name, b := range old.byName {
			nb := t.byName[name]
			if nb == nil || nb.live != b.live {
				b.retire()
				if nb == nil {
					r.opts.Metrics.Forget(name)
				}
			}
			if nb != nil && b.drained.Load() && !nb.drained.Load() {
				r.resetBreaker(nb) // undrained: back with a clean slate
			}
		}
	}
	return nil
}

// seed starts a new backend's capacity limit from what other replicas
// learned, when the fleet shares it.
func (r *Router) seed(lim *capacity.Limiter, backend string) {
	if l := r.capacities.Limit(backend); l > 0 {
		lim.Seed(l)
	}
}

// seedAll seeds every backend's limit that has learned nothing yet; the
// fleet's capacity sharing calls it after each read.
func (r *Router) seedAll() {
	t := r.tab.Load()
	if t == nil {
		return
	}
	for name, b := range t.byName {
		r.seed(b.lim, name)
	}
}

// learnedLimits returns the limits this replica has learned, for the fleet.
func (r *Router) learnedLimits() map[string]float64 {
	t := r.tab.Load()
	out := map[string]float64{}
	if t == nil {
		return out
	}
	for name, b := range t.byName {
		if b.lim.Learned() {
			out[name] = b.lim.Limit()
		}
	}
	return out
}

// capacityMetrics reports the capacity gauges at scrape time.
func (r *Router) capacityMetrics() metrics.Capacity {
	var c metrics.Capacity
	c.BudgetSpent, c.BudgetAllowed = r.budget.stats()
	for _, b := range r.Backends() {
		c.Backends = append(c.Backends, metrics.BackendCapacity{
			Backend: b.Name, Region: b.Region, Limit: float64(b.Capacity.Limit), InFlight: float64(b.Capacity.InFlight),
			Held: float64(b.Capacity.Held), Queued: float64(b.Capacity.Queued), BusyShare: b.Capacity.BusyShare, Floor: b.Capacity.Floor,
		})
	}
	return c
}

// Snapshot returns the snapshot in force.
func (r *Router) Snapshot() *regions.Snapshot { return r.tab.Load().snap }

// Close closes every backend client once its in-flight calls end. Calls made
// after Close fail.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	t := r.tab.Load()
	for _, b := range t.byName {
		b.retire()
	}
	t.cache.Close()
	r.capacities.Close()
	r.limiter.Close()
	r.cooldowns.Close()
	r.meter.Close()
	return nil
}

// Complete answers req: from the cache when a fresh answer is there, else
// from the first backend that can (identical concurrent cacheable requests
// share one upstream call), retrying busy answers elsewhere and degrading to
// fallbacks, and last to a stale cached answer.
//
// Everything that belongs to the caller is decided for the caller before any
// upstream call is shared: the model check, its tenant's quota, its cache
// scope and the routing hints that restrict which answers it may get (a
// caller only joins identical calls with the same ones).
func (r *Router) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	t := r.tab.Load()
	res, err := r.admit(ctx, t, req)
	if err != nil {
		return nil, err
	}
	defer res.Release()
	ctx, own := withOwnCall(ctx)
	p := t.cache.Plan(req, r.caller(ctx))
	if hit, ok := t.cache.Get(ctx, p); ok {
		r.cacheHit(hit)
		resp := hit.Response()
		r.saveAnswer(ctx, req, resp, own)
		return resp, nil
	}
	r.cacheMiss(p)
	p.Cacheable = p.Cacheable && !background(ctx) // a background call shares no upstream call
	resp, err := t.cache.Do(ctx, p, func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		markOwnCall(ctx)
		if p.Cacheable {
			// Shared by callers that may leave first: it writes no caller's
			// stats. Each caller reads who answered from the answer, or from
			// the *Error (Attempts, Backend, Region).
			ctx = withoutStats(ctx)
		}
		a, err := r.route(ctx, t, req, routeOpts{hedgeAfter: t.policy.hedgeAfter}, func(ctx context.Context, a *attempt) {
			ctx, w := watch(ctx, a, 0) // a.timeout of silence, queue_timeout before the answer
			defer w.stop()
			res, err := a.b.prov.Complete(ctx, req)
			if err != nil {
				w.fail(ctx, a, err)
				return
			}
			res.ServedBy, res.Attempts = a.b.servedBy, int32(a.n)
			res.Source = provenance(a.src, res.GetSource())
			a.resp, a.committed = res, true
		})
		if err != nil {
			return nil, err
		}
		r.chargeAnswer(ctx, req, a.resp) // once per upstream call
		return a.resp, nil
	})
	if err != nil && degradable(ctx, err) {
		if hit, ok := t.cache.GetStale(ctx, p); ok {
			r.cacheHit(hit)
			resp := hit.Response()
			r.saveAnswer(ctx, req, resp, own)
			return resp, nil
		}
	}
	if err == nil {
		r.saveAnswer(ctx, req, resp, own) // a share of another caller's call
	}
	return resp, err
}

// admit makes the checks that belong to the caller, before its call may be
// shared with others: the model is served, the tenant is within its quota,
// and its token rate and budget cover the call's estimate, which it
// reserves (the caller releases the reservation when its call ends).
func (r *Router) admit(ctx context.Context, t *table, req *detourv1.CompleteRequest) (*spend.Reservation, error) {
	if !t.serves(req.GetModel()) {
		return nil, &Error{Code: UnknownModel, Message: fmt.Sprintf("no backend serves model %q", excerpt.Clip(req.GetModel(), excerpt.Max))}
	}
	tenant := auth.TenantFrom(ctx)
	if background(ctx) {
		return nil, nil // spare capacity only: no quota, no token limits (its upstream call is still charged)
	}
	if ok, wait, label := t.quotas.allow(tenant); !ok {
		r.opts.Metrics.QuotaRejected(label)
		return nil, &Error{Code: OverQuota, Message: fmt.Sprintf("tenant %q is over its quota", excerpt.Clip(tenant, excerpt.Max)), RetryAfter: wait}
	}
	res, err := r.meter.Reserve(tenant, req)
	if err != nil {
		return nil, overLimit(err)
	}
	return res, nil
}

// caller is who the call comes from, as the cache scopes answers.
func (r *Router) caller(ctx context.Context) cache.Caller {
	return cache.Caller{Tenant: auth.TenantFrom(ctx), Authenticated: r.opts.AuthenticatedTenants}
}

// Stream answers req as chunks passed to send, with the same path as
// Complete: a cached stream is replayed; otherwise, until the first token
// is sent (chunks without one are held back until then), a failure is
// retried like Complete; after that it ends the call with an error, unless
// continuation is on (streams.continuation, RoutingHints.continuation) and
// another backend can continue the answer from the text so far: its chunks
// are spliced on, marked continued. A hedged start (streams.hedge_after,
// RoutingHints.hedge_after) runs a second attempt when the first sends no
// token in time; the first with a token holds the stream. send is called by
// one goroutine at a time (a hedge's winner calls it from its own).
func (r *Router) Stream(ctx context.Context, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) error {
	t := r.tab.Load()
	res, err := r.admit(ctx, t, req)
	if err != nil {
		return err
	}
	defer res.Release()
	ctx, own := withOwnCall(ctx)
	var got tally // what this caller received
	defer func() { r.saveStream(ctx, req, &got, own) }()
	recv := func(ch *detourv1.CompleteChunk) error {
		got.see(ch)
		return send(ch)
	}
	p := t.cache.Plan(req, r.caller(ctx))
	if hit, ok := t.cache.Get(ctx, p); ok {
		r.cacheHit(hit)
		return hit.Replay(recv)
	}
	r.cacheMiss(p)
	err = t.cache.Stream(ctx, p, func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		markOwnCall(ctx)
		if p.Cacheable {
			ctx = withoutStats(ctx) // shared by callers that may leave first
		}
		var up tally // what the upstream sent, charged once
		sc := newStreamCall(t, r.opts.Metrics, req, func(ch *detourv1.CompleteChunk) error {
			up.see(ch)
			return send(ch)
		})
		_, err := r.route(ctx, t, req, routeOpts{hedgeAfter: sc.hedgeAfter, stream: true}, func(ctx context.Context, a *attempt) {
			relay(ctx, a, sc)
		})
		if err == nil && sc.splices > 0 {
			r.opts.Metrics.Continuation(true)
		}
		r.chargeStream(ctx, req, &up)
		return err
	}, recv)
	if err != nil && got.chunks == 0 && degradable(ctx, err) {
		if hit, ok := t.cache.GetStale(ctx, p); ok {
			r.cacheHit(hit)
			return hit.Replay(recv)
		}
	}
	return err
}

// provenance is the source of an upstream's answer as detour passes it on:
// what the attempt was (LIVE, or FALLBACK for a fallback provider), unless a
// detour backend said its answer came from its cache or from its own
// fallback, which stays said: a stale answer is never passed on as fresh.
func provenance(attempt, upstream detourv1.Source) detourv1.Source {
	switch upstream {
	case detourv1.Source_SOURCE_CACHE, detourv1.Source_SOURCE_STALE_CACHE:
		return upstream
	case detourv1.Source_SOURCE_FALLBACK:
		return detourv1.Source_SOURCE_FALLBACK
	}
	return attempt
}

// degradable reports whether a failed call may be answered from a stale
// cached answer: every backend and fallback failed or was limited, and the
// caller is still waiting.
func degradable(ctx context.Context, err error) bool {
	var re *Error
	return ctx.Err() == nil && !background(ctx) && errors.As(err, &re) && (re.Code == Unavailable || re.Code == Exhausted)
}

func (r *Router) cacheHit(h *cache.Hit) {
	tier, result := "local", "hit"
	if h.Shared {
		tier = "redis"
	}
	if h.Stale {
		result = "stale"
	}
	r.opts.Metrics.Cache(tier, result)
}

func (r *Router) cacheMiss(p cache.Plan) {
	if p.Cacheable {
		r.opts.Metrics.Cache("local", "miss")
	}
}

// breakerChanged records a breaker transition. It runs under the breaker's
// lock, so it only records.
func (r *Router) breakerChanged(c breaker.Change) {
	level := slog.LevelInfo
	if c.To == breaker.Open {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "breaker state changed", "backend", c.Backend,
		"from", c.From.String(), "to", c.To.String(), "open_until", c.OpenUntil, "reason", c.Reason)
	if c.To == breaker.Open {
		r.cooldowns.Publish(c.Backend, c.OpenUntil) // never blocks
	}
	r.opts.Metrics.BreakerChanged(c.Backend, int(c.To), c.To.String())
}

// breakerExtended records a Retry-After that kept an open breaker open
// longer, and tells the fleet, so that other replicas hold off as long too.
// It runs under the breaker's lock.
func (r *Router) breakerExtended(backend string, until time.Time) {
	r.log.Info("breaker open extended by Retry-After", "backend", backend, "open_until", until)
	r.cooldowns.Publish(backend, until) // never blocks
}
