package router

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/capacity"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// attempt is one upstream call: its inputs, set by the router, and its
// outcome, set by the tryFunc.
type attempt struct {
	b       *backend
	src     detourv1.Source
	n       int           // the call's attempt number, from 1
	timeout time.Duration // bounds the attempt (for streams: each wait for a chunk)
	permit  *capacity.Permit
	brDone  func(breaker.Class, time.Duration) // nil for a panic attempt past an open breaker

	gate      *hedgeGate // a hedged stream's: who holds the stream (nil: this attempt)
	committed bool       // the answer (or part of it) reached the caller
	resumable bool       // a stream that broke after it started may be continued elsewhere
	broke     bool       // a stream that broke after its first token (class Busy; see relay)
	class     breaker.Class
	err       error
	resp      *detourv1.CompleteResponse // unary answer
	ttfc      time.Duration              // stream: time to the first chunk
	elapsed   time.Duration
}

// tryFunc makes one attempt on a.b and records its outcome in a.
type tryFunc func(ctx context.Context, a *attempt)

// abandon gives back an attempt that was admitted but never made.
func (a *attempt) abandon() {
	a.permit.Done(capacity.Dropped)
	if a.brDone != nil {
		a.brDone(breaker.Canceled, 0)
	}
}

// outcome is how the capacity limit sees an attempt's class.
func outcome(c breaker.Class) capacity.Outcome {
	switch c {
	case breaker.OK:
		return capacity.Success
	case breaker.Busy:
		return capacity.Busy
	case breaker.Failed, breaker.Down:
		return capacity.Failed
	case breaker.Exhausted:
		// The account cannot pay: says nothing about the backend's capacity
		// (the exhausted_for cooldown keeps it out of rotation instead).
		return capacity.Dropped
	}
	return capacity.Dropped
}

// do runs try and records the outcome on a.b: its breaker, its capacity
// limit, its balancer cost and its metrics. It is safe to run concurrently
// for different attempts.
func (r *Router) do(ctx context.Context, a *attempt, try tryFunc) {
	b := a.b
	b.hold()
	defer b.release()
	ctx, span := tracer.Start(ctx, "detour.attempt", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("detour.backend", b.cfg.Name), attribute.String("detour.region", b.region),
			attribute.Int("detour.attempt", a.n), attribute.Bool("detour.fallback", b.fallback)))
	start := r.now()
	r.try(ctx, a, try)
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
	if a.brDone != nil {
		a.brDone(a.class, breaker.RetryAfter(a.err))
	}
	o, counted := outcome(a.class), a.class
	if a.broke && a.class == breaker.Busy {
		// Busy for the breaker, but no sign of overload: the limit
		// learns nothing from it (it still counts against the answered
		// share), and the metrics count a failed attempt.
		o, counted = capacity.Failed, breaker.Failed
	}
	a.permit.DoneAfter(o, breaker.RetryAfter(a.err))
	b.m.Attempt(int(counted), a.elapsed)
	if a.class == breaker.Exhausted {
		// The account cannot pay: out of rotation here and, through the
		// fleet's cooldowns, on every replica.
		until := r.now().Add(b.cfg.ExhaustedCooldown())
		r.cooldowns.Publish(b.cfg.Name, until)
		r.log.Warn("backend account exhausted: out of rotation", "backend", b.cfg.Name, "until", until, "err", a.err)
	}
	switch a.class {
	case breaker.OK:
		cost := a.elapsed
		if a.ttfc > 0 {
			cost = a.ttfc
		}
		b.load.observe(r.now(), cost)
	case breaker.Busy, breaker.Failed, breaker.Down:
		b.load.observe(r.now(), max(a.elapsed, busyPenalty))
	}
}

// try runs the attempt, turning a panic in the provider into a failed
// attempt (the call then ends INTERNAL, see merge): hedged attempts run on
// goroutines of their own, where a panic would end the process, and no
// attempt may leak its slot or its breaker probe.
func (r *Router) try(ctx context.Context, a *attempt, try tryFunc) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("panic in an upstream attempt", "backend", a.b.cfg.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			a.class, a.err = breaker.Failed, fmt.Errorf("backend %s: %w: %v", a.b.cfg.Name, errPanic, p)
			a.committed = a.committed && a.resp == nil // a stream that started stays committed
		}
	}()
	try(ctx, a)
}

// errPanic marks an attempt whose provider panicked.
var errPanic = errors.New("the provider panicked")

// merge folds a finished attempt into the call; see run for the results.
func (c *call) merge(ctx context.Context, a *attempt) (*attempt, error) {
	c.upstream += a.elapsed
	c.last = a
	if a.committed {
		switch {
		case a.err == nil:
			return a, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case a.class == breaker.Canceled:
			return nil, a.err // the caller's side of the stream broke
		case a.resumable:
			// Continued on another backend (streamCall.request): go on as
			// after a failed attempt.
			c.broken = a
			if c.firstBreak == 0 {
				c.firstBreak = a.n
			}
			c.lastErr, c.lastClass = a.err, a.class
			return nil, nil
		}
		return nil, &Error{Code: Unavailable, Message: fmt.Sprintf("stream from backend %s broke after it started", a.b.cfg.Name),
			Attempts: a.n, Backend: a.b.cfg.Name, Region: a.b.region, Err: a.err}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if errors.Is(a.err, errPanic) {
		// A bug in detour, not a busy backend: the caller gets INTERNAL and
		// the log has the stack.
		return nil, &Error{Code: Internal, Message: "internal error", Attempts: a.n, Backend: a.b.cfg.Name, Region: a.b.region, Err: a.err}
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
	if errors.Is(a.err, breaker.ErrOpen) {
		c.noteClosed(a.b.closedUntil(c.r.now(), c.t.cool))
	}
	return nil, nil
}
