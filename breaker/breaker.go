package breaker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrOpen is returned by Allow when the breaker is open, or half-open with
// all its probes in flight. Allow returns it unwrapped.
var ErrOpen = errors.New("breaker open")

// Settings say when a breaker opens and how it comes back. Every zero field
// takes the default its comment names, so the zero Settings is the default
// policy: a dead backend trips fast, a busy one keeps its traffic.
type Settings struct {
	// ConsecutiveFailures opens the breaker after that many Down or Failed
	// answers in a row (refused or reset connections, timeouts, DNS or TLS
	// failures, 5xx answers other than busy, malformed answers). Zero means
	// 5.
	ConsecutiveFailures int
	// ConsecutiveBusy opens the breaker after that many Busy answers in a
	// row. Zero means never: busy answers are capacity, left to the
	// backend's adaptive limit, unless BusyRatio says the backend answers
	// practically nothing.
	ConsecutiveBusy int
	// BusyRatio opens the breaker when at least MinRequests answers were
	// counted in the rolling Window and this share of them were Busy, Down
	// or Failed. Zero means 0.95.
	BusyRatio float64
	// MinRequests is the volume in Window below which BusyRatio is ignored.
	// Zero means 50.
	MinRequests int
	// Window is the rolling window of BusyRatio. Zero means 10s.
	Window time.Duration
	// OpenFor is how long an open breaker waits before it admits probes.
	// Zero means 5s. A Retry-After on the answer that opened it, or on one
	// admitted before and answered while it is open, holds it open longer,
	// up to MaxOpen.
	OpenFor time.Duration
	// MaxOpen caps how long one opening lasts, whatever Retry-After says.
	// Zero means 2m.
	MaxOpen time.Duration
	// HalfOpenProbes is the number of probes admitted while half-open; that
	// many answers (OK or Busy: the backend is reachable) close it, one Down
	// or Failed answer opens it again. Zero means 3.
	HalfOpenProbes int
}

// Defaults of the zero Settings fields.
const (
	DefaultConsecutiveFailures = 5
	DefaultBusyRatio           = 0.95
	DefaultMinRequests         = 50
	DefaultWindow              = 10 * time.Second
	DefaultOpenFor             = 5 * time.Second
	DefaultMaxOpen             = 2 * time.Minute
	DefaultHalfOpenProbes      = 3

	// windowBuckets is the number of buckets of the rolling window.
	windowBuckets = 10
)

// withDefaults returns s with every zero field set to its default.
func (s Settings) withDefaults() Settings {
	if s.ConsecutiveFailures <= 0 {
		s.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if s.BusyRatio <= 0 {
		s.BusyRatio = DefaultBusyRatio
	}
	if s.MinRequests <= 0 {
		s.MinRequests = DefaultMinRequests
	}
	if s.Window <= 0 {
		s.Window = DefaultWindow
	}
	if s.OpenFor <= 0 {
		s.OpenFor = DefaultOpenFor
	}
	if s.MaxOpen <= 0 {
		s.MaxOpen = DefaultMaxOpen
	}
	if s.MaxOpen < s.OpenFor {
		s.MaxOpen = s.OpenFor
	}
	if s.HalfOpenProbes <= 0 {
		s.HalfOpenProbes = DefaultHalfOpenProbes
	}
	return s
}

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
	// Reason says why the breaker opened ("consecutive failures",
	// "consecutive busy", "busy ratio", "probe failed"), or that it was
	// reset; empty otherwise.
	Reason string
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
		attrs = append(attrs, "open_until", c.OpenUntil, "reason", c.Reason)
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

// Breaker is the circuit breaker of one backend: it takes a dead backend out
// of rotation quickly and lets it back once probes get through. It is safe
// for concurrent use, starts no goroutines, and none of its methods block
// beyond a short mutex hold.
//
// It wraps a gobreaker.TwoStepCircuitBreaker, which counts outcomes, decides
// when to trip (through ReadyToTrip, fed the counts below), admits half-open
// probes and drops results from before a transition. Breaker adds the
// classification of outcomes and times the open period itself, on an
// injectable clock, so that a backend's Retry-After can hold it open longer
// than OpenFor (gobreaker times its own Timeout on the wall clock only, so it
// is set to 1ns and Breaker does not call into it until OpenUntil).
type Breaker struct {
	name     string
	s        Settings // with defaults
	now      func() time.Time
	onChange func(Change)
	onExtend func(backend string, openUntil time.Time)

	// mu serialises every call into cb, so gobreaker's own mutex is always
	// taken inside mu and its OnStateChange (onStateChange below) runs with mu
	// held. The fields below are guarded by mu.
	mu sync.Mutex
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	// state mirrors cb's state as of its last transition.
	state State
	// openUntil is the earliest time a probe is admitted; zero unless open.
	openUntil time.Time
	// downRun and busyRun count Down/Failed and Busy answers in a row while
	// closed; an OK answer ends both runs, a Busy one ends downRun.
	downRun, busyRun int
	// tripRetryAfter is the Retry-After deadline of the answer being
	// recorded, read by onStateChange when that answer trips the breaker.
	tripRetryAfter time.Time
	// reason is why the breaker is tripping, set by readyToTrip.
	reason string
	// windowStart is when the first call of gobreaker's current window was
	// allowed.
	windowStart time.Time
}

// Sentinel outcomes handed to gobreaker.
var (
	errFailure  = errors.New("breaker: failure")
	errExcluded = errors.New("breaker: excluded")
)

// New returns the breaker of backend name under s; zero fields of s take
// their documented defaults.
func New(name string, s Settings, opts ...Option) *Breaker {
	o := newOptions(opts)
	b := &Breaker{
		name:     name,
		s:        s.withDefaults(),
		now:      o.now,
		onChange: o.onChange,
		onExtend: o.onExtend,
	}
	b.cb = b.newCB()
	return b
}

func (b *Breaker) newCB() *gobreaker.TwoStepCircuitBreaker[struct{}] {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        b.name,
		MaxRequests: uint32(b.s.HalfOpenProbes),
		Interval:    b.s.Window,
		// Buckets make the window roll instead of resetting every Interval.
		BucketPeriod: b.s.Window / windowBuckets,
		// gobreaker times the open state on the wall clock, which tests
		// cannot move. Let it become half-open at once and keep it open for
		// as long as needed by not calling it until openUntil (see Allow).
		Timeout:       time.Nanosecond,
		ReadyToTrip:   b.readyToTrip,
		IsExcluded:    func(err error) bool { return err == errExcluded },
		OnStateChange: b.onStateChange,
	})
}

// readyToTrip is gobreaker's ReadyToTrip; it runs under mu.
func (b *Breaker) readyToTrip(c gobreaker.Counts) bool {
	switch {
	case b.downRun >= b.s.ConsecutiveFailures:
		b.reason = "consecutive failures"
	case b.s.ConsecutiveBusy > 0 && b.busyRun >= b.s.ConsecutiveBusy:
		b.reason = "consecutive busy"
	default:
		// Requests also counts calls still in flight and excluded ones;
		// the ratio is over answered, counted calls only.
		// And over a sustained span: busy answers come back at once while
		// answers take a call's time, so the first answers of a window
		// (of a backend's life) are mostly busy ones.
		seen := c.TotalSuccesses + c.TotalFailures
		if seen == 0 || seen < uint32(b.s.MinRequests) || float64(c.TotalFailures)/float64(seen) < b.s.BusyRatio ||
			b.now().Sub(b.windowStart) < busySpan(b.s.Window) {
			return false
		}
		b.reason = "busy ratio"
	}
	return true
}

// busySpan is the least time a window must have run for its busy ratio to
// open the breaker: a second, or the window when shorter.
func busySpan(window time.Duration) time.Duration { return min(time.Second, window) }

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
	cb := b.cb
	cbDone, err := cb.Allow()
	if err != nil {
		// ErrOpenState (within gobreaker's 1ns timeout) or ErrTooManyRequests.
		return nil, ErrOpen
	}
	if cb.Counts().Requests == 1 {
		b.windowStart = b.now() // the first call of gobreaker's window
	}
	called := false
	return func(class Class, retryAfter time.Duration) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if called || cb != b.cb { // answered twice, or from before a Reset
			return
		}
		called = true
		b.finish(cbDone, class, retryAfter)
	}, nil
}

// finish records one outcome; mu is held.
func (b *Breaker) finish(cbDone func(error), class Class, retryAfter time.Duration) {
	now := b.now()
	if b.state == Open {
		// Admitted before the trip: gobreaker would drop the result as
		// stale anyway, and calling it now could move it to half-open
		// before openUntil. A Retry-After still says how long to stay away.
		if class == Busy && retryAfter > 0 {
			if t := b.capped(now, now.Add(retryAfter)); t.After(b.openUntil) {
				b.openUntil = t
				if b.onExtend != nil {
					b.onExtend(b.name, b.openUntil)
				}
			}
		}
		return
	}
	switch class {
	case OK:
		b.downRun, b.busyRun = 0, 0
		cbDone(nil)
	case Busy:
		b.busyRun++
		b.downRun = 0 // it answered: reachable
		if b.state == HalfOpen {
			cbDone(nil) // reachable: the adaptive limit handles the load
			return
		}
		if retryAfter > 0 {
			b.tripRetryAfter = now.Add(retryAfter) // used only if this answer trips it
		}
		cbDone(errFailure)
		b.tripRetryAfter = time.Time{}
	case Client, Canceled, Exhausted:
		// Exhausted: the account cannot pay; the backend is reachable and
		// its exhausted_for cooldown keeps it out of rotation.
		cbDone(errExcluded)
	default: // Down, Failed, and any unknown class
		b.downRun++
		cbDone(errFailure)
	}
}

// capped bounds an open period that starts now to MaxOpen.
func (b *Breaker) capped(now, until time.Time) time.Time {
	if max := now.Add(b.s.MaxOpen); until.After(max) {
		return max
	}
	return until
}

// onStateChange is gobreaker's OnStateChange. It runs under gobreaker's mutex
// and, since every call into cb holds mu, under mu too.
func (b *Breaker) onStateChange(_ string, from, to gobreaker.State) {
	now := b.now()
	b.state = State(to)
	reason := ""
	switch b.state {
	case Open:
		b.openUntil = now.Add(b.s.OpenFor)
		if b.tripRetryAfter.After(b.openUntil) {
			b.openUntil = b.capped(now, b.tripRetryAfter)
		}
		reason = b.reason
		if State(from) == HalfOpen {
			reason = "probe failed"
		}
		b.reason = ""
	default:
		b.openUntil = time.Time{}
		b.downRun, b.busyRun = 0, 0
	}
	b.emit(Change{Backend: b.name, From: State(from), To: b.state, At: now, OpenUntil: b.openUntilIfOpen(), Reason: reason})
}

func (b *Breaker) openUntilIfOpen() time.Time {
	if b.state == Open {
		return b.openUntil
	}
	return time.Time{}
}

func (b *Breaker) emit(c Change) {
	if b.onChange != nil {
		b.onChange(c)
	}
}

// Reset closes the breaker at once, forgetting its counts and any open
// period (an operator's reset, or a backend undrained after repair). It
// reports whether the breaker was not closed. Answers to calls admitted
// before the reset are ignored.
func (b *Breaker) Reset() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.state
	if b.now().Before(b.openUntil) {
		from = Open
	}
	b.cb = b.newCB()
	b.state, b.openUntil, b.downRun, b.busyRun = Closed, time.Time{}, 0, 0
	if from == Closed {
		return false
	}
	b.emit(Change{Backend: b.name, From: from, To: Closed, At: b.now(), Reason: "reset"})
	return true
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
	s Settings // with defaults applied
	b *Breaker
}

// NewSet returns an empty Set whose breakers are created with opts.
func NewSet(opts ...Option) *Set {
	return &Set{opts: opts}
}

// Get returns the breaker of backend name, creating it if there is none or if
// its settings changed (the new breaker starts closed). Settings that differ
// only in zero fields standing for their defaults are the same settings.
func (s *Set) Get(name string, st Settings) *Breaker {
	st = st.withDefaults()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[name]; ok && e.s == st {
		return e.b
	}
	if s.m == nil {
		s.m = map[string]setEntry{}
	}
	b := New(name, st, s.opts...)
	s.m[name] = setEntry{s: st, b: b}
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
