// Package router makes detour's routing decision for one call: which backend
// to try, whether to retry elsewhere, when to degrade to a fallback provider,
// and which error to report when nothing can answer.
//
// A Router serves the table built from the latest applied regions.Snapshot;
// Apply swaps it atomically, so a call in flight finishes on the table it
// started with while new calls see the new one.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/cache"
	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
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
	// Fleet is the Redis store shared by the replicas: the cache's shared
	// tier, breaker cooldowns and fleet-wide qps limits go through it. Nil
	// keeps all of them local. The caller closes it after the Router.
	Fleet *fleet.Store
}

// Router routes calls over the backends of the applied snapshot. It is safe
// for concurrent use. Complete and Stream block until an answer, a final
// error, or the end of ctx.
type Router struct {
	opts      Options
	log       *slog.Logger
	now       func() time.Time
	breakers  *breaker.Set
	budget    *budget
	limiter   *fleet.Limiter
	cooldowns *fleet.Cooldowns

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
	r.breakers = breaker.NewSet(append([]breaker.Option{breaker.WithOnChange(r.breakerChanged), breaker.WithOnExtend(r.breakerExtended)}, opts.BreakerOptions...)...)
	r.budget = newBudget(r.now)
	if err := r.Apply(snap); err != nil {
		r.limiter.Close()
		r.cooldowns.Close()
		return nil, err
	}
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
	r.tab.Store(t)
	r.breakers.Retain(slices.Collect(maps.Keys(t.byName)))
	if old != nil {
		for name, b := range old.byName {
			if nb := t.byName[name]; nb == nil || nb.live != b.live {
				b.retire()
				if nb == nil {
					r.opts.Metrics.Forget(name)
				}
			}
		}
	}
	return nil
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
	r.limiter.Close()
	r.cooldowns.Close()
	return nil
}

// Complete answers req: from the cache when a fresh answer is there, else
// from the first backend that can (identical concurrent cacheable requests
// share one upstream call), retrying busy answers elsewhere and degrading to
// fallbacks, and last to a stale cached answer.
func (r *Router) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	t := r.tab.Load()
	p := t.cache.Plan(req)
	if hit, ok := t.cache.Get(ctx, p); ok {
		r.cacheHit(hit)
		return hit.Response(), nil
	}
	r.cacheMiss(p)
	resp, err := t.cache.Do(ctx, p, func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		if p.Cacheable {
			ctx = withoutStats(ctx) // shared by callers that may leave first
		}
		a, err := r.route(ctx, t, req, true, func(ctx context.Context, a *attempt) {
			ctx, cancel := context.WithTimeout(ctx, a.timeout)
			defer cancel()
			res, err := a.b.prov.Complete(ctx, req)
			if err != nil {
				a.class, a.err = breaker.Classify(err), err
				return
			}
			res.ServedBy, res.Source, res.Attempts = a.b.servedBy, a.src, int32(a.n)
			a.resp, a.committed = res, true
		})
		if err != nil {
			return nil, err
		}
		return a.resp, nil
	})
	if err != nil && degradable(ctx, err) {
		if hit, ok := t.cache.GetStale(ctx, p); ok {
			r.cacheHit(hit)
			return hit.Response(), nil
		}
	}
	return resp, err
}

// Stream answers req as chunks passed to send, with the same path as
// Complete: a cached stream is replayed; otherwise, until the first chunk is
// sent, a failure is retried like Complete, and after that it ends the call
// with an error. send is called from the calling goroutine.
func (r *Router) Stream(ctx context.Context, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) error {
	t := r.tab.Load()
	p := t.cache.Plan(req)
	if hit, ok := t.cache.Get(ctx, p); ok {
		r.cacheHit(hit)
		return hit.Replay(send)
	}
	r.cacheMiss(p)
	sent := false
	err := t.cache.Stream(ctx, p, func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		if p.Cacheable {
			ctx = withoutStats(ctx) // shared by callers that may leave first
		}
		_, err := r.route(ctx, t, req, false, func(ctx context.Context, a *attempt) {
			relay(ctx, a, req, send)
		})
		return err
	}, func(ch *detourv1.CompleteChunk) error {
		sent = true
		return send(ch)
	})
	if err != nil && !sent && degradable(ctx, err) {
		if hit, ok := t.cache.GetStale(ctx, p); ok {
			r.cacheHit(hit)
			return hit.Replay(send)
		}
	}
	return err
}

// degradable reports whether a failed call may be answered from a stale
// cached answer: every backend and fallback failed or was limited, and the
// caller is still waiting.
func degradable(ctx context.Context, err error) bool {
	var re *Error
	return ctx.Err() == nil && errors.As(err, &re) && (re.Code == Unavailable || re.Code == Exhausted)
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

// attempt is one upstream call: its inputs, set by the router, and its
// outcome, set by the tryFunc.
type attempt struct {
	b       *backend
	src     detourv1.Source
	n       int           // the call's attempt number, from 1
	timeout time.Duration // bounds the attempt (for streams: each wait for a chunk)

	committed bool // the answer (or part of it) reached the caller
	class     breaker.Class
	err       error
	resp      *detourv1.CompleteResponse // unary answer
	ttfc      time.Duration              // stream: time to the first chunk
	elapsed   time.Duration
}

// tryFunc makes one attempt on a.b and records its outcome in a.
type tryFunc func(ctx context.Context, a *attempt)

// minStart is the least deadline a call needs left for an attempt to start;
// a call with less fails fast rather than queueing for nothing.
const minStart = time.Millisecond

// route runs the decision of DESIGN.md: quota, primaries in order with
// retries inside the budget and the deadline, then fallbacks, then an error
// with a retry hint. It returns the attempt that answered.
func (r *Router) route(ctx context.Context, t *table, req *detourv1.CompleteRequest, hedgeable bool, try tryFunc) (*attempt, error) {
	stats := statsFrom(ctx)
	if !t.serves(req.GetModel()) {
		return nil, &Error{Code: UnknownModel, Message: fmt.Sprintf("no backend serves model %q", req.GetModel())}
	}
	if ok, wait, label := t.quotas.allow(TenantFrom(ctx)); !ok {
		r.opts.Metrics.QuotaRejected(label)
		return nil, &Error{Code: OverQuota, Message: fmt.Sprintf("tenant %q is over its quota", TenantFrom(ctx)), RetryAfter: wait}
	}
	if dl, ok := ctx.Deadline(); ok && dl.Sub(r.now()) < minStart {
		return nil, context.DeadlineExceeded
	}
	r.budget.request()
	c := &call{ctx: ctx, r: r, t: t, stats: stats}
	defer c.report()
	prefer := r.opts.Region
	if p := req.GetRouting().GetPreferRegion(); p != "" {
		prefer = p
	}
	if hedgeable && t.policy.hedgeAfter > 0 {
		if a, err := c.hedge(ctx, req.GetModel(), prefer, try); a != nil || err != nil {
			return a, err
		}
	}
	for c.attempts < t.policy.maxAttempts {
		b := t.pick(r.now(), req.GetModel(), prefer, c.busyRegion, r.opts.Zone, c.tried)
		if b == nil {
			break
		}
		if c.attempts > 0 {
			if !r.budget.retry() {
				r.opts.Metrics.BudgetExhausted()
				break
			}
			if !c.backoff(ctx) {
				break
			}
			r.opts.Metrics.Retry()
		}
		if a, err := c.run(ctx, b, detourv1.Source_SOURCE_LIVE, try); a != nil || err != nil {
			return a, err
		}
	}
	if !req.GetRouting().GetNoFallback() {
		for _, b := range t.fallbacks {
			if !b.serves(req.GetModel()) || slices.Contains(c.tried, b) {
				continue
			}
			if a, err := c.run(ctx, b, detourv1.Source_SOURCE_FALLBACK, try); a != nil || err != nil {
				return a, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, c.failure()
}

// call is the state of one routed call. Only the call's goroutine touches it.
type call struct {
	ctx   context.Context // the caller's, for limiter waits
	r     *Router
	t     *table
	stats *CallStats

	tried      []*backend
	attempts   int
	lastErr    error
	lastClass  breaker.Class
	busyRegion string        // region of the last busy attempt, tried last
	retryAfter time.Duration // the longest upstream Retry-After seen
	openFor    time.Duration // the soonest an open breaker admits a probe
	limited    bool          // a backend was skipped at its limit
	limitWait  time.Duration // the soonest a qps-limited backend takes a call
	upstream   time.Duration // time spent waiting on upstreams
	waited     time.Duration // time spent in backoff
	last       *attempt
}

// run makes one attempt on b and merges its outcome. It returns the attempt
// when it answered, and an error when the call is over (caller gone, request
// rejected, stream broken); (nil, nil) lets the caller move on.
func (c *call) run(ctx context.Context, b *backend, src detourv1.Source, try tryFunc) (*attempt, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.tried = append(c.tried, b)
	a := c.start(b, src)
	if a == nil {
		return nil, nil
	}
	c.r.do(ctx, a, try)
	return c.merge(ctx, a)
}

// start admits an attempt on b, or returns nil when b is at its limit or its
// breaker refuses.
func (c *call) start(b *backend, src detourv1.Source) *attempt {
	ok, conc, wait := b.acquire(c.ctx, c.r.limiter)
	if !ok {
		b.m.Limited(!conc)
		c.limited = true
		if wait > 0 && (c.limitWait == 0 || wait < c.limitWait) {
			c.limitWait = wait
		}
		return nil
	}
	c.attempts++
	return &attempt{b: b, src: src, n: c.attempts, timeout: c.t.attemptTimeout(b)}
}

// do runs try under b's breaker and records the outcome on b. It is safe to
// run concurrently for different attempts.
func (r *Router) do(ctx context.Context, a *attempt, try tryFunc) {
	b := a.b
	defer b.release()
	done, err := b.br.Allow()
	if err != nil {
		a.class, a.err = breaker.Busy, err
		return
	}
	ctx, span := tracer.Start(ctx, "detour.attempt", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("detour.backend", b.cfg.Name), attribute.String("detour.region", b.region),
			attribute.Int("detour.attempt", a.n), attribute.Bool("detour.fallback", b.fallback)))
	start := r.now()
	try(ctx, a)
	a.elapsed = r.now().Sub(start)
	defer func() {
		span.SetAttributes(attribute.String("detour.outcome", a.class.String()))
		if a.err != nil && a.class != breaker.OK {
			span.SetStatus(otelcodes.Error, a.class.String())
		}
		span.End()
	}()
	if ctx.Err() != nil && a.class != breaker.OK {
		a.class = breaker.Canceled // the caller's deadline or cancellation
	}
	if a.class == breaker.Canceled && ctx.Err() == nil && !a.committed {
		a.class = breaker.Failed // cancelled without the caller going away
	}
	done(a.class, breaker.RetryAfter(a.err))
	b.m.Attempt(int(a.class), a.elapsed)
	switch a.class {
	case breaker.OK:
		cost := a.elapsed
		if a.ttfc > 0 {
			cost = a.ttfc
		}
		b.load.observe(r.now(), cost)
	case breaker.Busy, breaker.Failed:
		b.load.observe(r.now(), max(a.elapsed, busyPenalty))
	}
}

// merge folds a finished attempt into the call; see run for the results.
func (c *call) merge(ctx context.Context, a *attempt) (*attempt, error) {
	c.upstream += a.elapsed
	c.last = a
	if errors.Is(a.err, breaker.ErrOpen) {
		c.attempts-- // refused before any upstream call
		c.noteOpen(a.b)
		return nil, nil
	}
	if a.committed {
		switch {
		case a.err == nil:
			return a, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case a.class == breaker.Canceled:
			return nil, a.err // the caller's side of the stream broke
		}
		return nil, &Error{Code: Unavailable, Message: fmt.Sprintf("stream from backend %s broke after it started", a.b.cfg.Name), Attempts: a.n, Err: a.err}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if a.class == breaker.Client {
		return nil, rejected(a.b, a.n, a.err)
	}
	c.lastErr, c.lastClass = a.err, a.class
	if a.class == breaker.Busy {
		c.busyRegion = a.b.region
	}
	if ra := breaker.RetryAfter(a.err); ra > c.retryAfter {
		c.retryAfter = ra
	}
	return nil, nil
}

// report fills the caller's CallStats, if any.
func (c *call) report() {
	if c.stats == nil {
		return
	}
	c.stats.Attempts, c.stats.Upstream, c.stats.Waited = c.attempts, c.upstream, c.waited
	if c.last != nil {
		c.stats.Backend, c.stats.Region = c.last.b.cfg.Name, c.last.b.region
		c.stats.FirstChunk = c.last.ttfc
	}
}

// noteOpen records that b's breaker refused the call, for the retry hint.
func (c *call) noteOpen(b *backend) {
	if until := b.br.OpenUntil(); !until.IsZero() {
		if d := until.Sub(c.r.now()); d > 0 && (c.openFor == 0 || d < c.openFor) {
			c.openFor = d
		}
	}
}

// backoff waits a full-jitter exponential backoff before the next attempt. It
// reports false, without waiting, when the wait would overrun the caller's
// deadline, and false when ctx ends while waiting.
func (c *call) backoff(ctx context.Context) bool {
	p := &c.t.policy
	ceil := p.backoffBase << (c.attempts - 1)
	if ceil > p.backoffMax || ceil <= 0 {
		ceil = p.backoffMax
	}
	d := time.Duration(rand.Int64N(int64(ceil) + 1))
	if dl, ok := ctx.Deadline(); ok && dl.Sub(c.r.now()) <= d+minStart {
		return false
	}
	if d <= 0 {
		return true
	}
	c.waited += d
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *call) failure() error {
	ra := c.retryAfter
	if ra <= 0 {
		ra = c.openFor
	}
	if ra <= 0 {
		ra = c.limitWait
	}
	if ra <= 0 {
		ra = time.Second
	}
	if c.attempts == 0 {
		if c.limited {
			return &Error{Code: Exhausted, Message: "every backend for this model is at its rate or concurrency limit", RetryAfter: ra}
		}
		return &Error{Code: Unavailable, Message: "no backend can take calls for this model now (drained or circuit open)", RetryAfter: ra}
	}
	code := Unavailable
	var sc breaker.StatusCoder
	if errors.As(c.lastErr, &sc) && sc.StatusCode() == 429 {
		code = Exhausted
	} else if s, ok := status.FromError(c.lastErr); ok && s.Code() == codes.ResourceExhausted {
		code = Exhausted
	}
	return &Error{
		Code:       code,
		Message:    fmt.Sprintf("every backend is busy or failing (%d attempts, last: %s)", c.attempts, c.lastClass),
		RetryAfter: ra,
		Attempts:   c.attempts,
		Err:        c.lastErr,
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
		"from", c.From.String(), "to", c.To.String(), "open_until", c.OpenUntil)
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

func rejected(b *backend, attempts int, err error) error {
	e := &Error{Code: Rejected, Message: fmt.Sprintf("backend %s rejected the request: %v", b.cfg.Name, err), Attempts: attempts, Err: err}
	var sc breaker.StatusCoder
	if errors.As(err, &sc) {
		e.UpstreamStatus = sc.StatusCode()
		if e.UpstreamStatus == 401 || e.UpstreamStatus == 403 {
			e.Code = Internal
			e.Message = fmt.Sprintf("backend %s refused detour's credentials", b.cfg.Name)
		}
	}
	return e
}
