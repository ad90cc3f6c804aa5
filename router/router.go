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

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Options configure a Router. The zero value is usable.
type Options struct {
	// Region and Zone are where this instance runs; backends of the own region
	// are tried first, and backends of the own zone are preferred within it.
	Region, Zone string
	// NewProvider builds the client for a backend. Nil uses package provider.
	NewProvider func(regions.Backend) (Provider, error)
	// Logger receives routing events. Nil uses slog.Default().
	Logger *slog.Logger
}

// Router routes calls over the backends of the applied snapshot. It is safe
// for concurrent use. Complete and Stream block until an answer, a final
// error, or the end of ctx.
type Router struct {
	opts Options
	log  *slog.Logger

	breakers *breaker.Set

	mu     sync.Mutex // serializes Apply and Close
	closed bool
	tab    atomic.Pointer[table]
}

// New returns a Router serving snap.
func New(snap *regions.Snapshot, opts Options) (*Router, error) {
	if opts.NewProvider == nil {
		opts.NewProvider = newProvider
	}
	r := &Router{opts: opts, log: opts.Logger}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.breakers = breaker.NewSet(breaker.WithOnChange(r.breakerChanged))
	if err := r.Apply(snap); err != nil {
		return nil, err
	}
	return r, nil
}

func newProvider(b regions.Backend) (Provider, error) {
	if b.Kind == regions.KindDetour {
		return provider.NewDetour(b)
	}
	return provider.NewOpenAI(b)
}

// Apply makes snap the routing table. Backends whose config is unchanged keep
// their state (in-flight count, breaker); removed backends take no new calls
// and are closed when their in-flight calls end. On error nothing changes.
func (r *Router) Apply(snap *regions.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("router is closed")
	}
	old := r.tab.Load()
	t, fresh, err := build(snap, old, r.opts.NewProvider, r.breakers)
	if err != nil {
		for _, b := range fresh {
			b.close()
		}
		return err
	}
	r.tab.Store(t)
	r.breakers.Retain(slices.Collect(maps.Keys(t.byName)))
	if old != nil {
		for name, b := range old.byName {
			if t.byName[name] != b {
				b.retire()
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
	for _, b := range r.tab.Load().byName {
		b.retire()
	}
	return nil
}

// Complete answers req from the first backend that can, retrying busy
// answers elsewhere and degrading to fallbacks.
func (r *Router) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	var resp *detourv1.CompleteResponse
	err := r.route(ctx, req, func(ctx context.Context, b *backend, timeout time.Duration, src detourv1.Source, attempts int) (bool, breaker.Class, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		res, err := b.prov.Complete(ctx, req)
		if err != nil {
			return false, breaker.Classify(err), err
		}
		res.ServedBy = b.servedBy()
		res.Source = src
		res.Attempts = int32(attempts)
		resp = res
		return true, breaker.OK, nil
	})
	return resp, err
}

// Stream answers req as chunks passed to send. Until the first chunk is sent
// a failure is retried like Complete; after that it ends the call with an
// error. send is called from the calling goroutine.
func (r *Router) Stream(ctx context.Context, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) error {
	return r.route(ctx, req, func(ctx context.Context, b *backend, timeout time.Duration, src detourv1.Source, attempts int) (bool, breaker.Class, error) {
		return relay(ctx, b, req, timeout, src, attempts, send)
	})
}

// tryFunc makes one attempt on b within timeout. committed reports that the
// answer (or part of it) reached the caller, so no other backend may be tried.
type tryFunc func(ctx context.Context, b *backend, timeout time.Duration, src detourv1.Source, attempts int) (committed bool, class breaker.Class, err error)

// route runs the decision of DESIGN.md: primaries in order with retries, then
// fallbacks, then an error with a retry hint.
func (r *Router) route(ctx context.Context, req *detourv1.CompleteRequest, try tryFunc) error {
	t := r.tab.Load()
	if !t.serves(req.GetModel()) {
		return &Error{Code: UnknownModel, Message: fmt.Sprintf("no backend serves model %q", req.GetModel())}
	}
	c := call{}
	prefer := r.opts.Region
	if p := req.GetRouting().GetPreferRegion(); p != "" {
		prefer = p
	}
	for c.attempts < t.policy.maxAttempts {
		b := t.pick(req.GetModel(), prefer, c.busyRegion, r.opts.Zone, c.tried)
		if b == nil {
			break
		}
		if c.attempts > 0 && !c.backoff(ctx, &t.policy) {
			break
		}
		committed, err := c.attempt(ctx, t, b, detourv1.Source_SOURCE_LIVE, try)
		if committed || err != nil {
			return err
		}
	}
	if !req.GetRouting().GetNoFallback() {
		for _, b := range t.fallbacks {
			if !b.serves(req.GetModel()) || slices.Contains(c.tried, b) {
				continue
			}
			committed, err := c.attempt(ctx, t, b, detourv1.Source_SOURCE_FALLBACK, try)
			if committed || err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.failure()
}

// call is the state of one routed call.
type call struct {
	tried      []*backend
	attempts   int
	lastErr    error
	lastClass  breaker.Class
	busyRegion string        // region of the last busy attempt, tried last
	retryAfter time.Duration // the longest upstream Retry-After seen
	openFor    time.Duration // the soonest an open breaker admits a probe
}

// attempt runs try on b under the attempt timeout. It returns a non-nil error
// only when the call is over (answer committed, caller gone, or the request
// rejected); otherwise the caller may move on to another backend.
func (c *call) attempt(ctx context.Context, t *table, b *backend, src detourv1.Source, try tryFunc) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	c.tried = append(c.tried, b)
	done, err := b.br.Allow()
	if err != nil {
		c.noteOpen(b)
		return false, nil
	}
	c.attempts++
	b.inflight.Add(1)
	defer b.release()
	committed, class, err := try(ctx, b, t.attemptTimeout(b), src, c.attempts)
	if ctx.Err() != nil {
		class = breaker.Canceled // the caller's deadline or cancellation
	}
	done(class, breaker.RetryAfter(err))
	if committed {
		switch {
		case err == nil:
			return true, nil
		case ctx.Err() != nil:
			return true, ctx.Err()
		case class == breaker.Canceled:
			return true, err // the caller's side of the stream broke
		}
		return true, &Error{Code: Unavailable, Message: fmt.Sprintf("stream from backend %s broke after it started", b.cfg.Name), Attempts: c.attempts, Err: err}
	}
	if ctx.Err() != nil {
		// The caller's deadline or cancellation, not the backend's fault.
		return false, ctx.Err()
	}
	switch class {
	case breaker.Client:
		return false, rejected(b, c.attempts, err)
	case breaker.Canceled:
		// The attempt was cancelled without the caller going away: treat it
		// like a failed attempt.
		class = breaker.Failed
	}
	c.lastErr, c.lastClass = err, class
	if class == breaker.Busy {
		c.busyRegion = b.region
	}
	if ra := breaker.RetryAfter(err); ra > c.retryAfter {
		c.retryAfter = ra
	}
	return false, nil
}

// noteOpen records that b's breaker refused the call, for the retry hint.
func (c *call) noteOpen(b *backend) {
	if until := b.br.OpenUntil(); !until.IsZero() {
		if d := time.Until(until); d > 0 && (c.openFor == 0 || d < c.openFor) {
			c.openFor = d
		}
	}
}

// backoff waits a full-jitter exponential backoff before the next attempt. It
// reports false, without waiting, when the wait would overrun the caller's
// deadline, and false when ctx ends while waiting.
func (c *call) backoff(ctx context.Context, p *policy) bool {
	ceil := p.backoffBase << (c.attempts - 1)
	if ceil > p.backoffMax || ceil <= 0 {
		ceil = p.backoffMax
	}
	d := time.Duration(rand.Int64N(int64(ceil) + 1))
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return false
	}
	if d <= 0 {
		return true
	}
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
		ra = time.Second
	}
	if c.attempts == 0 {
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
// lock, so it only logs.
func (r *Router) breakerChanged(c breaker.Change) {
	level := slog.LevelInfo
	if c.To == breaker.Open {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "breaker state changed", "backend", c.Backend,
		"from", c.From.String(), "to", c.To.String(), "open_until", c.OpenUntil)
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
