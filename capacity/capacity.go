package capacity

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome is how an attempt made under a Permit ended, as the limit sees
// it.
type Outcome int

const (
	// Success: the backend answered.
	Success Outcome = iota
	// Busy: the backend said it is overloaded (429, 503, ...). The slot
	// stays taken for about one call's duration.
	Busy
	// Failed: the attempt failed otherwise (unreachable, malformed). It does
	// not inform the limit, but counts against the backend's answered share.
	Failed
	// Dropped: the caller went away, or the attempt was abandoned; nothing
	// is learned from it.
	Dropped
)

// State says what a Limiter's estimator is doing, for operators.
type State int

const (
	// SlowStart: no overload seen yet; the limit grows by half per epoch
	// while it is in use.
	SlowStart State = iota
	// Growing: the limit grows additively while it is in use.
	Growing
	// Testing: the limit was lowered to test whether detour overran the
	// backend.
	Testing
	// Limited: a test confirmed that detour overran the backend; the limit
	// holds near what the backend answered.
	Limited
	// Static: the adaptive limit is off (Settings.Disabled).
	Static
)

func (s State) String() string {
	switch s {
	case SlowStart:
		return "slow-start"
	case Growing:
		return "growing"
	case Testing:
		return "testing"
	case Limited:
		return "limited"
	case Static:
		return "static"
	}
	return "unknown"
}

// Settings configure a Limiter. Zero fields take the defaults named.
type Settings struct {
	// Initial is the limit before one is learned. Zero means 256.
	Initial int
	// Min is the least the limit falls to. Zero means 1.
	Min int
	// Max is the most the limit grows to (a backend's max_concurrency).
	// Zero means 10000.
	Max int
	// QueueFactor bounds the waiting calls to this multiple of the limit,
	// and at least 16. Zero means 4.
	QueueFactor float64
	// Disabled fixes the limit at Max and learns nothing: only a static
	// max_concurrency applies.
	Disabled bool
}

// Defaults of the zero Settings fields.
const (
	DefaultInitial     = 256
	DefaultMin         = 1
	DefaultMax         = 10000
	DefaultQueueFactor = 4
	minQueue           = 16

	// maxHoldCalls and maxHold bound how long a Retry-After holds a slot.
	maxHoldCalls = 4
	maxHold      = 10 * time.Second

	// Unlimited is a Max that no limit reaches: with Disabled, a backend
	// without max_concurrency takes every call.
	Unlimited = 1 << 30
)

func (s Settings) withDefaults() Settings {
	if s.Initial <= 0 {
		s.Initial = DefaultInitial
	}
	if s.Min <= 0 {
		s.Min = DefaultMin
	}
	if s.Max <= 0 {
		s.Max = DefaultMax
	}
	s.Min = min(s.Min, s.Max)
	s.Initial = min(max(s.Initial, s.Min), s.Max)
	if s.QueueFactor <= 0 {
		s.QueueFactor = DefaultQueueFactor
	}
	return s
}

// Clock is the time source of a Limiter. Tests inject a manual one.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d, unless stopped.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a scheduled call from Clock.AfterFunc.
type Timer interface {
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time                            { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// ErrFull is matched (errors.Is) by the error Acquire returns when the call
// cannot get a slot in time: the queue is full, the estimated wait is longer
// than the call may wait, or the wait ran out.
var ErrFull = errors.New("backend at its capacity limit")

// FullError is returned by Acquire when no slot could be had. Wait is the
// estimated time until a slot would free for a new caller.
type FullError struct {
	Wait time.Duration
}

func (e *FullError) Error() string {
	return fmt.Sprintf("%v (a slot in about %v)", ErrFull, e.Wait.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrFull) true.
func (e *FullError) Is(target error) bool { return target == ErrFull }

// Stats is a Limiter's state at one moment.
type Stats struct {
	Limit     int           // slots the backend may use now
	InFlight  int           // calls holding a slot
	Held      int           // slots held by recent busy answers
	Queued    int           // calls waiting for a slot
	BusyShare float64       // recent share of answers that were busy or failed
	Floor     float64       // the busy share not caused by detour's load
	CallTime  time.Duration // recent duration of an answered call
	State     State
}

// Limiter is the adaptive concurrency limit of one backend. It is safe for
// concurrent use. TryAcquire, Room, Wait and Stats never block; Acquire
// blocks until a slot, the end of ctx, or the wait it was given.
type Limiter struct {
	clock Clock

	mu     sync.Mutex
	s      Settings
	est    estimator
	inUse  int
	holds  []time.Time // expiry of slots held by busy answers, ascending
	q      queue
	wake   Timer // fires at the first hold expiry while calls wait
	wakeAt time.Time

	limitBits atomic.Uint64 // the limit as float64 bits, for lock-free reads
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock sets the Limiter's clock. The default is the system clock.
func WithClock(c Clock) Option { return func(l *Limiter) { l.clock = c } }

// New returns a Limiter with settings s.
func New(s Settings, opts ...Option) *Limiter {
	l := &Limiter{clock: systemClock{}}
	for _, o := range opts {
		o(l)
	}
	l.s = s.withDefaults()
	l.est = newEstimator(l.s, l.clock.Now())
	if l.s.Disabled {
		l.est.limit, l.est.state = float64(l.s.Max), Static
	}
	l.publish()
	return l
}

// SetSettings changes the settings, keeping what was learned within the
// new bounds.
func (l *Limiter) SetSettings(s Settings) {
	s = s.withDefaults()
	l.mu.Lock()
	defer l.mu.Unlock()
	if s == l.s {
		return
	}
	wasDisabled := l.s.Disabled
	l.s, l.est.s = s, s
	switch {
	case s.Disabled:
		l.est.limit, l.est.state, l.est.test = float64(s.Max), Static, nil
	case wasDisabled:
		l.est = newEstimator(s, l.clock.Now())
	default:
		l.est.limit = l.est.clampLimit(l.est.limit)
	}
	l.publish()
	l.handoff(l.clock.Now())
}

// Seed starts the limit at limit (another replica's learned limit) unless
// this Limiter has already learned one.
func (l *Limiter) Seed(limit float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.s.Disabled || !l.est.slowStart || limit <= 0 {
		return
	}
	l.est.limit = l.est.clampLimit(limit)
	l.est.slowStart, l.est.state = false, Growing
	l.publish()
	l.handoff(l.clock.Now())
}

// Limit returns the current limit without locking.
func (l *Limiter) Limit() float64 { return math.Float64frombits(l.limitBits.Load()) }

// Learned reports whether the limit has moved past slow start (so that it
// is worth sharing with other replicas).
func (l *Limiter) Learned() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.s.Disabled && !l.est.slowStart
}

func (l *Limiter) publish() { l.limitBits.Store(math.Float64bits(l.est.limit)) }

// slots is the number of calls the limit admits; mu is held.
func (l *Limiter) slots() int { return max(1, int(l.est.limit)) }

// expire frees the held slots whose hold ended; mu is held.
func (l *Limiter) expire(now time.Time) {
	i := 0
	for i < len(l.holds) && !l.holds[i].After(now) {
		i++
	}
	if i > 0 {
		l.holds = append(l.holds[:0], l.holds[i:]...)
	}
}

// room is the free slots now; mu is held.
func (l *Limiter) room(now time.Time) int {
	l.expire(now)
	return l.slots() - l.inUse - len(l.holds)
}

// Room returns the slots free now: positive when a call would get one at
// once (and no call waits ahead of it).
func (l *Limiter) Room() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.q.n > 0 {
		return 0
	}
	return l.room(l.clock.Now())
}

// TryAcquire takes a slot if one is free and no call waits for one. A
// refusal counts as demand above the limit.
func (l *Limiter) TryAcquire() (*Permit, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if l.q.n > 0 || l.room(now) <= 0 {
		l.est.refused(now)
		return nil, false
	}
	return l.take(now), true
}

// take hands out a slot; mu is held and a slot is free.
func (l *Limiter) take(now time.Time) *Permit {
	l.inUse++
	return &Permit{l: l, start: now, c: l.est.begin(now, l.inUse+len(l.holds))}
}

// Wait estimates how long a call that starts waiting now would wait for a
// slot: 0 when one is free.
func (l *Limiter) Wait() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if l.q.n == 0 && l.room(now) > 0 {
		return 0
	}
	return l.waitFor(l.q.n + 1)
}

// waitFor estimates the wait of the pos'th waiter: each slot frees about
// once per call time, so a slot frees every callTime/limit on average; mu is
// held.
func (l *Limiter) waitFor(pos int) time.Duration {
	return time.Duration(float64(pos) / float64(l.slots()) * float64(l.est.hold()))
}

// maxQueue is the most calls that may wait; mu is held.
func (l *Limiter) maxQueue() int {
	return max(minQueue, int(l.s.QueueFactor*float64(l.slots())))
}

// Acquire takes a slot, waiting for one up to maxWait (and the end of ctx)
// when none is free. Waiting calls are served in turn across classes (the
// caller's tenant), first come first served within a class. It refuses at
// once, with a *FullError, when the queue is full or the estimated wait is
// longer than maxWait; and with a *FullError when maxWait passes. It
// returns ctx's error when ctx ends first.
func (l *Limiter) Acquire(ctx context.Context, class string, maxWait time.Duration) (*Permit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	now := l.clock.Now()
	if l.q.n == 0 && l.room(now) > 0 {
		p := l.take(now)
		l.mu.Unlock()
		return p, nil
	}
	l.est.refused(now)
	est := l.waitFor(l.q.n + 1)
	if maxWait <= 0 || l.q.n >= l.maxQueue() || est > maxWait {
		l.mu.Unlock()
		return nil, &FullError{Wait: est}
	}
	w := &waiter{class: class, ch: make(chan struct{})}
	l.q.push(w)
	l.armWake(now)
	l.mu.Unlock()

	expired := make(chan struct{})
	t := l.clock.AfterFunc(maxWait, func() { close(expired) })
	defer t.Stop()
	var err error
	select {
	case <-w.ch:
		return w.permit, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
		err = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.permit != nil { // granted while leaving: give it back
		p := w.permit
		l.inUse--
		p.done.Store(true)
		l.handoff(l.clock.Now())
	} else {
		l.q.remove(w)
	}
	if err != nil {
		return nil, err
	}
	return nil, &FullError{Wait: l.waitFor(l.q.n + 1)}
}

// handoff gives free slots to waiting calls in turn; mu is held.
func (l *Limiter) handoff(now time.Time) {
	for l.q.n > 0 && l.room(now) > 0 {
		w := l.q.pop()
		w.permit = l.take(now)
		close(w.ch)
	}
	l.armWake(now)
}

// armWake schedules a handoff at the first hold expiry while calls wait;
// mu is held.
func (l *Limiter) armWake(now time.Time) {
	if l.q.n == 0 || len(l.holds) == 0 {
		return
	}
	at := l.holds[0]
	if l.wake != nil && l.wakeAt.Equal(at) {
		return
	}
	if l.wake != nil {
		l.wake.Stop()
	}
	l.wakeAt = at
	l.wake = l.clock.AfterFunc(max(at.Sub(now), 0), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.wake = nil
		l.handoff(l.clock.Now())
	})
}

// Stats returns the Limiter's state now.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.expire(now)
	return Stats{
		Limit:     l.slots(),
		InFlight:  l.inUse,
		Held:      len(l.holds),
		Queued:    l.q.n,
		BusyShare: l.est.decayedShare(now),
		Floor:     l.est.floor,
		CallTime:  l.est.okLat,
		State:     l.est.state,
	}
}

// BusyShare returns the recent share of answers that were busy or failed,
// fading toward 0 while the backend gets no calls.
func (l *Limiter) BusyShare() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.est.decayedShare(l.clock.Now())
}

// ForgetShare sets BusyShare to zero, as for a backend an operator says is
// repaired: routing stops avoiding it at once. The learned limit and floor
// stay.
func (l *Limiter) ForgetShare() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.est.share, l.est.shareAt = 0, l.clock.Now()
}

// Permit is one slot, taken until Done.
type Permit struct {
	l     *Limiter
	start time.Time
	c     *cohort
	done  atomic.Bool
}

// Done returns the slot (a Busy outcome keeps it held for about one call's
// duration) and records the outcome. Calls after the first are ignored.
func (p *Permit) Done(o Outcome) { p.DoneAfter(o, 0) }

// DoneAfter is Done with the backend's Retry-After for a Busy outcome: the
// slot stays held that long (at least one call's duration, at most
// maxHoldCalls of them and maxHold), so that a rate limit's "come back in a
// second" throttles the rate of calls as much as it asks.
func (p *Permit) DoneAfter(o Outcome, retryAfter time.Duration) {
	if p == nil || !p.done.CompareAndSwap(false, true) {
		return
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.inUse--
	if l.s.Disabled {
		l.est.end(now, p.c, o, now.Sub(p.start)) // keeps the answered share
		l.est.limit = float64(l.s.Max)
		l.handoff(now)
		return
	}
	if o == Busy {
		hold := l.est.hold()
		if retryAfter > hold {
			hold = min(retryAfter, maxHoldCalls*hold, maxHold)
		}
		until := now.Add(hold)
		// Holds are nearly always in order; keep the slice sorted anyway.
		i := len(l.holds)
		for i > 0 && l.holds[i-1].After(until) {
			i--
		}
		l.holds = append(l.holds, time.Time{})
		copy(l.holds[i+1:], l.holds[i:])
		l.holds[i] = until
	}
	l.est.inUse = l.inUse + len(l.holds)
	if l.est.end(now, p.c, o, now.Sub(p.start)) {
		l.publish()
	}
	l.handoff(now)
}

// queue holds waiting calls by class, served round-robin across classes and
// in arrival order within one.
type queue struct {
	n       int
	classes map[string]*[]*waiter
	order   []string // classes with waiters, in turn order
	next    int
}

type waiter struct {
	class  string
	ch     chan struct{}
	permit *Permit // set, under the Limiter's mu, when granted
}

func (q *queue) push(w *waiter) {
	if q.classes == nil {
		q.classes = map[string]*[]*waiter{}
	}
	l := q.classes[w.class]
	if l == nil {
		l = new([]*waiter)
		q.classes[w.class] = l
		q.order = append(q.order, w.class)
	}
	*l = append(*l, w)
	q.n++
}

func (q *queue) pop() *waiter {
	if q.next >= len(q.order) {
		q.next = 0
	}
	c := q.order[q.next]
	l := q.classes[c]
	w := (*l)[0]
	(*l)[0] = nil
	*l = (*l)[1:]
	q.n--
	if len(*l) == 0 {
		q.drop(q.next)
	} else {
		q.next++
	}
	return w
}

// drop removes the class at order[i], which has no waiters left.
func (q *queue) drop(i int) {
	delete(q.classes, q.order[i])
	q.order = append(q.order[:i], q.order[i+1:]...)
	if q.next > i {
		q.next--
	}
}

func (q *queue) remove(w *waiter) {
	l := q.classes[w.class]
	if l == nil {
		return
	}
	for i, x := range *l {
		if x == w {
			*l = append((*l)[:i], (*l)[i+1:]...)
			q.n--
			break
		}
	}
	if len(*l) == 0 {
		for i, c := range q.order {
			if c == w.class {
				q.drop(i)
				break
			}
		}
	}
}
