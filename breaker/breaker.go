package breaker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/detour-dev/detour/regions"
)

// ErrOpen is returned by Allow when the breaker is open, or half-open with
// all its probes in flight. Allow returns it unwrapped.
var ErrOpen = errors.New("breaker open")

// Defaults for the zero fields of regions.BreakerPolicy.
const (
	defaultConsecutiveBusy = 5
	defaultBusyRatio       = 0.5
	defaultMinRequests     = 20
	defaultWindow          = 10 * time.Second
	defaultOpenFor         = 5 * time.Second
	defaultHalfOpenProbes  = 3

	// windowBuckets is the number of buckets of the rolling window.
	windowBuckets = 10
)

// State is the state of a Breaker.
type State int

// States of a Breaker, in gobreaker's order.
const (
	// Closed: calls pass and their outcomes are counted.
	Closed State = iota
	// HalfOpen: a limited number of probes pass; they decide whether the
	// breaker closes again or reopens.
	HalfOpen
	// Open: no call passes until OpenUntil.
	Open
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return "unknown"
}

// Change is one state transition of a backend's breaker.
type Change struct {
	Backend string
	From    State
	To      State
	// At is the time of the transition, read from the breaker's clock.
	At time.Time
	// OpenUntil is the earliest time a probe is admitted when To is Open,
	// otherwise zero. A later Retry-After may still extend it.
	OpenUntil time.Time
}

// Option configures a Breaker or a Set.
type Option func(*options)

type options struct {
	now      func() time.Time
	onChange func(Change)
	onExtend func(backend string, openUntil time.Time)
}

// WithClock sets the clock that times the open period, the Retry-After floor
// and Change.At. The default is time.Now. now must be safe for concurrent use
// and must not block.
//
// gobreaker offers no clock injection, so its rolling Window still runs on
// the wall clock; only the open period (which this package times itself) uses
// now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// WithOnChange sets the hook called on every state transition. The default
// logs one slog line. A nil hook records nothing.
//
// The hook runs while the breaker holds its locks (gobreaker calls its
// OnStateChange under its mutex): it must only record (a metric, a log line, a
// slice append under its own lock), must not block and must not call back
// into the Breaker.
func WithOnChange(hook func(Change)) Option {
	return func(o *options) { o.onChange = hook }
}

// WithOnExtend sets the hook called when a busy answer's Retry-After pushes
// an open breaker's OpenUntil later (no state changes, so no Change is
// sent). The default is none. It runs under the breaker's lock, with the
// same rules as WithOnChange's hook.
func WithOnExtend(hook func(backend string, openUntil time.Time)) Option {
	return func(o *options) { o.onExtend = hook }
}

func logChange(c Change) {
	level := slog.LevelInfo
	attrs := []any{"backend", c.Backend, "from", c.From.String(), "to", c.To.String()}
	if c.To == Open {
		level = slog.LevelWarn
		attrs = append(attrs, "open_until", c.OpenUntil)
	}
	slog.Log(context.Background(), level, "breaker state change", attrs...)
}

func newOptions(opts []Option) options {
	o := options{now: time.Now, onChange: logChange}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

// Breaker is the circuit breaker of one backend. It is safe for concurrent
// use, starts no goroutines, and none of its methods block beyond a short
// mutex hold.
//
// It wraps a gobreaker.TwoStepCircuitBreaker, which counts outcomes, decides
// when to trip, admits half-open probes and drops results from before a
// transition. Breaker adds the classification of outcomes and times the open
// period itself, on an injectable clock, so that a backend's Retry-After can
// hold it open longer than OpenFor.
type Breaker struct {
	name     string
	openFor  time.Duration
	now      func() time.Time
	onChange func(Change)
	onExtend func(backend string, openUntil time.Time)
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]

	// mu serialises every call into cb, so gobreaker's own mutex is always
	// taken inside mu and its OnStateChange (onStateChange below) runs with mu
	// held. The fields below are guarded by mu.
	mu sync.Mutex
	// state mirrors cb's state as of its last transition.
	state State
	// openUntil is the earliest time a probe is admitted; zero unless open.
	openUntil time.Time
	// retryAfter is the latest Retry-After deadline a busy answer asked for
	// since the breaker last closed; a trip keeps the breaker open until it.
	retryAfter time.Time
}

// Sentinel outcomes handed to gobreaker.
var (
	errFailure  = errors.New("breaker: failure")
	errExcluded = errors.New("breaker: excluded")
)

// New returns the breaker of backend name under policy p; zero fields of p
// take the defaults documented on regions.BreakerPolicy.
//
// The breaker opens after p.ConsecutiveBusy busy or failed answers in a row,
// or when at least p.MinRequests answers were counted in the rolling p.Window
// and the busy or failed share of them reached p.BusyRatio. It stays open for
// p.OpenFor, or longer when a busy answer carried a Retry-After, then admits
// p.HalfOpenProbes probes: if all succeed it closes, if one fails it opens
// again.
func New(name string, p regions.BreakerPolicy, opts ...Option) *Breaker {
	o := newOptions(opts)
	p = withDefaults(p)
	b := &Breaker{
		name:     name,
		openFor:  p.OpenFor.D(),
		now:      o.now,
		onChange: o.onChange,
		onExtend: o.onExtend,
	}
	consecutive := uint32(p.ConsecutiveBusy)
	minRequests := uint32(p.MinRequests)
	ratio := p.BusyRatio
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: uint32(p.HalfOpenProbes),
		Interval:    p.Window.D(),
		// Buckets make the window roll instead of resetting every Interval.
		BucketPeriod: p.Window.D() / windowBuckets,
		// gobreaker times the open state on the wall clock, which tests
		// cannot move. Let it become half-open at once and keep it open for
		// as long as needed by not calling it until openUntil (see Allow).
		Timeout: time.Nanosecond,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if c.ConsecutiveFailures >= consecutive {
				return true
			}
			// Requests also counts calls still in flight and excluded ones;
			// the ratio is over answered, counted calls only.
			seen := c.TotalSuccesses + c.TotalFailures
			return seen >= minRequests && seen > 0 &&
				float64(c.TotalFailures)/float64(seen) >= ratio
		},
		IsExcluded:    func(err error) bool { return err == errExcluded },
		OnStateChange: b.onStateChange,
	})
	return b
}

func withDefaults(p regions.BreakerPolicy) regions.BreakerPolicy {
	if p.ConsecutiveBusy <= 0 {
		p.ConsecutiveBusy = defaultConsecutiveBusy
	}
	if p.BusyRatio <= 0 {
		p.BusyRatio = defaultBusyRatio
	}
	if p.MinRequests <= 0 {
		p.MinRequests = defaultMinRequests
	}
	if p.Window <= 0 {
		p.Window = regions.Duration(defaultWindow)
	}
	if p.OpenFor <= 0 {
		p.OpenFor = regions.Duration(defaultOpenFor)
	}
	if p.HalfOpenProbes <= 0 {
		p.HalfOpenProbes = defaultHalfOpenProbes
	}
	return p
}

// Name returns the backend name the breaker was created with.
func (b *Breaker) Name() string { return b.name }

// Allow asks whether a call to the backend may go ahead. It never blocks.
//
// When it may, Allow returns done, which the caller must call exactly once
// with the outcome's class and its Retry-After hint (0 when none); later calls
// of the same done are ignored. Otherwise Allow returns ErrOpen.
func (b *Breaker) Allow() (done func(class Class, retryAfter time.Duration), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.now().Before(b.openUntil) {
		return nil, ErrOpen
	}
	// Once openUntil has passed, gobreaker (long past its own 1ns timeout)
	// turns half-open here and admits up to MaxRequests probes.
	cbDone, err := b.cb.Allow()
	if err != nil {
		// ErrOpenState (within gobreaker's 1ns timeout) or ErrTooManyRequests.
		return nil, ErrOpen
	}
	called := false
	return func(class Class, retryAfter time.Duration) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if called {
			return
		}
		called = true
		b.finish(cbDone, class, retryAfter)
	}, nil
}

// finish records one outcome; mu is held.
func (b *Breaker) finish(cbDone func(error), class Class, retryAfter time.Duration) {
	if class == Busy && retryAfter > 0 {
		if t := b.now().Add(retryAfter); t.After(b.retryAfter) {
			b.retryAfter = t
		}
		if b.state == Open && b.retryAfter.After(b.openUntil) {
			b.openUntil = b.retryAfter
			if b.onExtend != nil {
				b.onExtend(b.name, b.openUntil)
			}
		}
	}
	if b.state == Open {
		// Admitted before the trip: gobreaker would drop the result as
		// stale anyway, and calling it now could move it to half-open
		// before openUntil.
		return
	}
	switch class {
	case OK:
		cbDone(nil)
	case Client, Canceled:
		cbDone(errExcluded)
	default: // Busy, Failed, and any unknown class
		cbDone(errFailure)
	}
}

// onStateChange is gobreaker's OnStateChange. It runs under gobreaker's mutex
// and, since every call into cb holds mu, under mu too.
func (b *Breaker) onStateChange(_ string, from, to gobreaker.State) {
	now := b.now()
	b.state = State(to)
	switch b.state {
	case Open:
		b.openUntil = now.Add(b.openFor)
		if b.retryAfter.After(b.openUntil) {
			b.openUntil = b.retryAfter
		}
	case Closed:
		b.openUntil = time.Time{}
		b.retryAfter = time.Time{}
	default:
		b.openUntil = time.Time{}
	}
	if b.onChange == nil {
		return
	}
	c := Change{Backend: b.name, From: State(from), To: b.state, At: now}
	if b.state == Open {
		c.OpenUntil = b.openUntil
	}
	b.onChange(c)
}

// State returns the breaker's current state. An open breaker whose OpenUntil
// has passed reports (and becomes) HalfOpen, as the next Allow would.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.now().Before(b.openUntil) {
		return Open
	}
	if b.state == Open {
		b.cb.State() // lets gobreaker turn half-open; onStateChange records it
	}
	return b.state
}

// OpenUntil returns the earliest time the breaker admits a probe while it is
// open, and the zero time when it is not open (also when half-open with every
// probe in flight).
func (b *Breaker) OpenUntil() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.now().Before(b.openUntil) {
		return b.openUntil
	}
	return time.Time{}
}

// Set keeps one Breaker per backend name, so that breakers keep their state
// across config reloads. The zero Set is empty and creates breakers with the
// default options. It is safe for concurrent use; no method blocks beyond a
// short mutex hold.
type Set struct {
	opts []Option

	mu sync.Mutex
	m  map[string]setEntry
}

type setEntry struct {
	policy regions.BreakerPolicy // with defaults applied
	b      *Breaker
}

// NewSet returns an empty Set whose breakers are created with opts.
func NewSet(opts ...Option) *Set {
	return &Set{opts: opts}
}

// Get returns the breaker of backend name, creating it if there is none or if
// its policy changed (the new breaker starts closed). Policies that differ
// only in zero fields standing for their defaults are the same policy.
func (s *Set) Get(name string, p regions.BreakerPolicy) *Breaker {
	p = withDefaults(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[name]; ok && e.policy == p {
		return e.b
	}
	if s.m == nil {
		s.m = map[string]setEntry{}
	}
	b := New(name, p, s.opts...)
	s.m[name] = setEntry{policy: p, b: b}
	return b
}

// Retain drops the breakers of every backend not named in names.
func (s *Set) Retain(names []string) {
	keep := make(map[string]bool, len(names))
	for _, n := range names {
		keep[n] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.m {
		if !keep[n] {
			delete(s.m, n)
		}
	}
}
