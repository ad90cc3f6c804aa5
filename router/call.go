package router

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/capacity"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// minStart is the least deadline a call needs left for an attempt to start;
// a call with less fails fast rather than queueing for nothing.
const minStart = time.Millisecond

// route runs the decision of the package documentation (the caller's own
// checks, in Router.admit, come first): primaries in the order of
// table.order, each attempt on the first candidate with room
// under its capacity limit, waiting for a slot when none has room, sending a
// bounded share to the least-bad backend when every one is closed; retries
// inside the budget and the deadline; then fallbacks; then an error with a
// retry hint. It returns the attempt that answered.
// routeOpts are how route treats a call's first attempt.
type routeOpts struct {
	hedgeAfter time.Duration // hedge the first attempt after this long (0: never)
	stream     bool          // a stream: the first attempt to send a token wins the hedge
}

func (r *Router) route(ctx context.Context, t *table, req *detourv1.CompleteRequest, o routeOpts, try tryFunc) (*attempt, error) {
	stats := statsFrom(ctx)
	if dl, ok := ctx.Deadline(); ok && dl.Sub(r.now()) < minStart {
		return nil, context.DeadlineExceeded
	}
	bg := background(ctx)
	if !bg {
		r.budget.request()
	}
	c := &call{ctx: ctx, r: r, t: t, stats: stats, model: req.GetModel(), prefer: r.opts.Region,
		tenant: auth.TenantFrom(ctx), fallback: !bg && !req.GetRouting().GetNoFallback(), bg: bg}
	if p := req.GetRouting().GetPreferRegion(); p != "" {
		c.prefer = p
	}
	defer c.report()
	if !bg && o.hedgeAfter > 0 {
		hedge := c.hedge
		if o.stream {
			hedge = c.hedgeStream
		}
		if a, err := hedge(ctx, o.hedgeAfter, try); a != nil || err != nil {
			return a, err
		}
	}
	for c.attempts < t.policy.maxAttempts && !(bg && c.attempts > 0) {
		if c.attempts > 0 {
			if !r.budget.retry() {
				r.opts.Metrics.BudgetExhausted()
				break
			}
			if c.sameBackendNext() && !c.backoff(ctx) {
				break
			}
		}
		a := c.next(ctx, c.attempts > 0)
		if a == nil {
			break
		}
		if c.attempts > 1 {
			r.opts.Metrics.Retry()
		}
		if a, err := c.run(ctx, a, try); a != nil || err != nil {
			return a, err
		}
	}
	if c.fallback {
		for _, b := range t.fallbacks {
			if !b.serves(c.model) || slices.Contains(c.tried, b) || !b.closedUntil(r.now(), t.cool).IsZero() {
				continue
			}
			if c.attempts > 0 && !r.budget.retry() {
				r.opts.Metrics.BudgetExhausted()
				break
			}
			a := c.claim(ctx, b, detourv1.Source_SOURCE_FALLBACK, true)
			if a == nil {
				continue
			}
			if a, err := c.run(ctx, a, try); a != nil || err != nil {
				return a, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b := c.broken; b != nil {
		msg := fmt.Sprintf("stream from backend %s broke after it started, and continuing it failed (%d attempts, last: %s)",
			b.b.cfg.Name, c.attempts, c.lastClass)
		if c.attempts == c.firstBreak {
			// No attempt after the first break: no continuation went out.
			msg = fmt.Sprintf("stream from backend %s broke after it started, and no backend could take its continuation (open breakers, full limits or the retry budget; %d attempts)",
				b.b.cfg.Name, c.attempts)
		}
		return nil, &Error{Code: Unavailable, Attempts: c.attempts, Backend: b.b.cfg.Name, Region: b.b.region, Err: c.lastErr, Message: msg}
	}
	return nil, c.failure()
}

// call is the state of one routed call. Only the call's goroutine touches it.
type call struct {
	ctx      context.Context // the caller's, for limiter waits
	r        *Router
	t        *table
	stats    *CallStats
	model    string
	prefer   string
	tenant   string
	fallback bool // fallbacks may answer (routing.no_fallback unset)
	bg       bool // a background call (background.go)

	reclaiming bool // waiting for the slot of a preempted background attempt

	buf        [16]*backend
	tried      []*backend
	attempts   int
	lastErr    error
	lastClass  breaker.Class
	busyRegion string        // region of the last busy attempt, tried last
	retryAfter time.Duration // the longest upstream Retry-After seen
	openUntil  time.Time     // the soonest a closed backend takes calls again
	limited    bool          // a backend was full (capacity or qps)
	limitWait  time.Duration // the soonest a full backend would take a call
	upstream   time.Duration // time spent waiting on upstreams
	waited     time.Duration // time spent in backoff and in capacity queues
	last       *attempt
	broken     *attempt // the last stream attempt that broke after it started
	firstBreak int      // the number of the first attempt that did
}

// candidates returns the primaries for the next attempt, best first, and
// notes when closed ones reopen.
func (c *call) candidates() []*backend {
	now := c.r.now()
	out, soonest := c.t.order(c.buf[:0], now, c.model, c.prefer, c.busyRegion, c.r.opts.Zone, c.tried, c.t.capacity.spillFactor)
	c.noteClosed(soonest)
	return out
}

// sameBackendNext reports whether the next attempt would go back to a
// backend this call already tried (then it backs off first).
func (c *call) sameBackendNext() bool {
	cands := c.candidates()
	return len(cands) > 0 && slices.Contains(c.tried, cands[0])
}

// next admits the call's next attempt: on the first primary with room; else,
// when fallbacks may answer, on the first fallback with room; else it waits
// in the queue of the candidate that frees a slot soonest. When every
// primary and fallback is closed (breaker open or cooling down) it sends the
// attempt to the one that reopens soonest, if the retry budget allows (as
// Envoy's panic threshold does: never refuse the whole load without trying).
// It returns nil when no attempt can be made.
func (c *call) next(ctx context.Context, retry bool) *attempt {
	cands := c.candidates()
	if c.bg {
		return c.nextBackground(ctx, cands)
	}
	for _, b := range cands {
		if a := c.claim(ctx, b, detourv1.Source_SOURCE_LIVE, false); a != nil {
			return a
		}
	}
	if a := c.reclaim(ctx, cands); a != nil {
		return a
	}
	var fbs []*backend
	if c.fallback {
		now := c.r.now()
		for _, b := range c.t.fallbacks {
			if !b.serves(c.model) || slices.Contains(c.tried, b) {
				continue
			}
			if until := b.closedUntil(now, c.t.cool); !until.IsZero() {
				c.noteClosed(until)
				continue
			}
			fbs = append(fbs, b)
			if a := c.claim(ctx, b, detourv1.Source_SOURCE_FALLBACK, false); a != nil {
				return a
			}
		}
	}
	if len(cands) > 0 || len(fbs) > 0 {
		return c.queue(ctx, cands, fbs)
	}
	return c.panicAttempt(ctx, retry)
}

// claim takes a slot on b if it has room (or, with wait, waits for one in
// its queue), passes its breaker and its qps limit, and returns the
// attempt; nil when b cannot take it now.
func (c *call) claim(ctx context.Context, b *backend, src detourv1.Source, wait bool) *attempt {
	var p *capacity.Permit
	if wait {
		var err error
		if p, err = c.wait(ctx, b); err != nil {
			return nil
		}
	} else {
		var ok bool
		if p, ok = b.lim.TryAcquire(); !ok {
			b.m.Limited(false)
			c.noteFull(b.lim.Wait())
			return nil
		}
	}
	done, err := b.br.Allow()
	if err != nil { // half-open with its probes out, or opened meanwhile
		p.Done(capacity.Dropped)
		c.noteClosed(b.closedUntil(c.r.now(), c.t.cool))
		return nil
	}
	if b.cfg.QPS > 0 {
		if ok, qwait := c.r.limiter.Allow(c.ctx, b.cfg.Name, b.cfg.QPS); !ok {
			p.Done(capacity.Dropped)
			done(breaker.Canceled, 0)
			b.m.Limited(true)
			c.noteFull(max(qwait, time.Millisecond))
			return nil
		}
	}
	return c.admit(b, src, p, done)
}

// admit makes the attempt for a slot taken on b.
func (c *call) admit(b *backend, src detourv1.Source, p *capacity.Permit, done func(breaker.Class, time.Duration)) *attempt {
	c.tried = append(c.tried, b)
	c.attempts++
	return &attempt{b: b, src: src, n: c.attempts, timeout: c.t.attemptTimeout(b), permit: p, brDone: done}
}

// queue waits for a slot on the candidate (primaries, then fallbacks) that
// frees one soonest, within capacity.max_queue_wait and the call's deadline.
func (c *call) queue(ctx context.Context, cands, fbs []*backend) *attempt {
	if c.t.capacity.maxQueueWait <= 0 {
		return nil
	}
	var best *backend
	var bestWait time.Duration
	src := detourv1.Source_SOURCE_LIVE
	for i, list := range [][]*backend{cands, fbs} {
		for _, b := range list {
			if w := b.lim.Wait(); best == nil || w < bestWait {
				best, bestWait = b, w
				if i == 1 {
					src = detourv1.Source_SOURCE_FALLBACK
				}
			}
		}
		if best != nil {
			break // fallbacks only when no primary is open to calls
		}
	}
	return c.claim(ctx, best, src, true)
}

// wait waits for a slot on b.
func (c *call) wait(ctx context.Context, b *backend) (*capacity.Permit, error) {
	max := c.t.capacity.maxQueueWait
	if c.reclaiming && max < reclaimWait {
		max = reclaimWait // a preempted background attempt frees the slot at once
	}
	if dl, ok := ctx.Deadline(); ok {
		max = min(max, dl.Sub(c.r.now())-minStart)
	}
	start := time.Now()
	p, err := b.lim.Acquire(ctx, c.tenant, max)
	c.waited += time.Since(start)
	var full *capacity.FullError
	if errors.As(err, &full) {
		b.m.Limited(false)
		c.noteFull(full.Wait)
	}
	return p, err
}

// panicAttempt sends the attempt to the primary that reopens soonest when
// every candidate is closed, spending the retry budget for it, so that a
// fleet whose breakers all opened still tries a bounded share of its calls.
func (c *call) panicAttempt(ctx context.Context, retry bool) *attempt {
	if !c.r.budget.panicAllowed(retry) {
		return nil
	}
	now := c.r.now()
	var best *backend
	var bestUntil time.Time
	for _, g := range c.t.groups {
		for _, b := range g.backends {
			if !b.serves(c.model) {
				continue
			}
			until := b.closedUntil(now, c.t.cool)
			if best == nil || until.Before(bestUntil) {
				best, bestUntil = b, until
			}
		}
	}
	if best == nil {
		return nil
	}
	p, ok := best.lim.TryAcquire()
	if !ok {
		c.noteFull(best.lim.Wait())
		return nil
	}
	c.r.opts.Metrics.Panic(best.cfg.Name)
	return c.admit(best, detourv1.Source_SOURCE_LIVE, p, nil)
}

// run makes the attempt and merges its outcome. It returns the attempt when
// it answered, and an error when the call is over (caller gone, request
// rejected, stream broken); (nil, nil) lets the caller move on.
func (c *call) run(ctx context.Context, a *attempt, try tryFunc) (*attempt, error) {
	if err := ctx.Err(); err != nil {
		a.abandon()
		return nil, err
	}
	if c.bg {
		return c.runBackground(ctx, a, try)
	}
	c.r.do(ctx, a, try)
	return c.merge(ctx, a)
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

// noteClosed records when a closed backend reopens, for the retry hint.
func (c *call) noteClosed(until time.Time) {
	if !until.IsZero() && (c.openUntil.IsZero() || until.Before(c.openUntil)) {
		c.openUntil = until
	}
}

// noteFull records that a backend was full and when it would take a call.
func (c *call) noteFull(wait time.Duration) {
	c.limited = true
	if wait > 0 && (c.limitWait == 0 || wait < c.limitWait) {
		c.limitWait = wait
	}
}

// backoff waits a full-jitter exponential backoff before an attempt on a
// backend the call already tried. It reports false, without waiting, when
// the wait would overrun the caller's deadline, and false when ctx ends
// while waiting.
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
	reopen := time.Duration(0)
	if !c.openUntil.IsZero() {
		reopen = max(c.openUntil.Sub(c.r.now()), time.Millisecond)
	}
	if c.attempts == 0 && c.bg {
		return c.deferred()
	}
	if c.attempts == 0 {
		if c.limited {
			return &Error{Code: Exhausted, Message: "every backend for this model is at its capacity, rate or concurrency limit",
				RetryAfter: cmpOr(c.limitWait, reopen, time.Second)}
		}
		return &Error{Code: Unavailable, Message: "no backend can take calls for this model now (drained or circuit open)",
			RetryAfter: cmpOr(reopen, time.Second)}
	}
	code := Unavailable
	var sc breaker.StatusCoder
	if errors.As(c.lastErr, &sc) && sc.StatusCode() == 429 {
		code = Exhausted
	} else if s, ok := status.FromError(c.lastErr); ok && s.Code() == codes.ResourceExhausted {
		code = Exhausted
	}
	var backend, region string
	if c.last != nil {
		backend, region = c.last.b.cfg.Name, c.last.b.region
	}
	if breaker.Misdirected(c.lastErr) {
		// The backends answered, but refused detour's own credentials or
		// had no such endpoint: an operator's problem, not the caller's and
		// not busy. The detail goes to the log only.
		return &Error{Code: Internal, Message: "no backend would take detour's request (credentials or endpoint refused); see detour's log",
			Attempts: c.attempts, Backend: backend, Region: region, Err: c.lastErr}
	}
	return &Error{
		Code:    code,
		Backend: backend,
		Region:  region,
		Message: fmt.Sprintf("every backend is busy or failing (%d attempts, last: %s)", c.attempts, c.lastClass),
		// An upstream's Retry-After is passed on, but no longer than a
		// breaker may stay open: the hint is not a promise of days.
		RetryAfter: cmpOr(min(c.retryAfter, c.t.policy.maxHint), c.limitWait, reopen, time.Second),
		Attempts:   c.attempts,
		Err:        c.lastErr,
	}
}

// cmpOr returns the first positive duration.
func cmpOr(ds ...time.Duration) time.Duration {
	for _, d := range ds {
		if d > 0 {
			return d
		}
	}
	return 0
}

// rejected is the error of a request an upstream refused as invalid. The
// caller learns which backend and the upstream's status, never its words:
// they may quote the prompt or a key (they go to detour's log).
func rejected(b *backend, attempts int, err error) error {
	e := &Error{Code: Rejected, Attempts: attempts, Backend: b.cfg.Name, Region: b.region, Err: err}
	var sc breaker.StatusCoder
	if errors.As(err, &sc) {
		e.UpstreamStatus = sc.StatusCode()
		e.Message = fmt.Sprintf("backend %s rejected the request as invalid (HTTP %d); its reason is in detour's log", b.cfg.Name, e.UpstreamStatus)
	} else {
		e.Message = fmt.Sprintf("backend %s rejected the request as invalid; its reason is in detour's log", b.cfg.Name)
	}
	return e
}
