package router

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Background is how a background call (an asynchronous job, package jobs)
// uses the backends: only their spare capacity, never ahead of an
// interactive call.
type Background struct {
	// Reserve is the share of each backend's capacity limit that background
	// calls leave free for interactive ones: a background attempt starts
	// only while the backend has more free slots than that (and at least
	// one more). Zero means DefaultReserve.
	Reserve float64
}

// DefaultReserve is the share of a backend's limit kept for interactive
// calls when Background.Reserve is zero.
const DefaultReserve = 0.1

type backgroundKey struct{}

// WithBackground marks the calls made with ctx as background calls. A
// background call:
//
//   - makes one attempt, on the first primary candidate whose capacity limit
//     has room beyond the reserve and whose recent busy share is not above
//     its usual one (another replica may have filled it); it never waits in a backend's queue, never
//     goes past an open breaker, never hedges, and never uses a fallback or
//     a stale cached answer;
//   - fails with a Deferred *Error, whose RetryAfter estimates when room
//     frees, when no candidate has spare room; a busy answer fails it as it
//     would fail an interactive call's last attempt (Unavailable or
//     Exhausted), without a retry;
//   - yields its slot to an interactive call that finds no room on its
//     backend: the attempt is cancelled at once, the slot goes to the
//     interactive call, and the background call fails Deferred;
//   - is not charged to the tenant's quota, does not share an upstream call
//     with identical calls, and spends no retry budget.
func WithBackground(ctx context.Context, bg Background) context.Context {
	if bg.Reserve <= 0 || math.IsNaN(bg.Reserve) {
		bg.Reserve = DefaultReserve
	}
	return context.WithValue(ctx, backgroundKey{}, bg)
}

// backgroundOf returns the background settings of ctx, and whether it marks
// a background call.
func backgroundOf(ctx context.Context) (Background, bool) {
	bg, ok := ctx.Value(backgroundKey{}).(Background)
	return bg, ok
}

func background(ctx context.Context) bool {
	_, ok := backgroundOf(ctx)
	return ok
}

// reclaimWait bounds the wait of an interactive call for the slot of the
// background attempt it preempted (even when capacity.max_queue_wait lets
// no call wait): the attempt gives it back as soon as its upstream call
// returns from the cancellation.
const reclaimWait = 250 * time.Millisecond

// ErrPreempted is the cause of a background attempt cancelled to give its
// slot to an interactive call; the call's Deferred *Error wraps it.
var ErrPreempted = errors.New("background attempt preempted by an interactive call")

// busyMargin is how far above its usual busy share (the floor its capacity
// limit learned) a backend's recent busy share may be for background calls
// to start: beyond it the backend is full, whichever replica filled it, and
// its spare capacity is nil.
const busyMargin = 0.1

// spare is how many slots b has beyond the reserve for background calls:
// none while calls wait for a slot, or while the backend answers busy more
// than usual (with calls in flight: one background call may go to an idle
// backend, so that its busy share is known again).
func spare(b *backend, reserve float64) int {
	st := b.lim.Stats()
	if st.Queued > 0 {
		return 0
	}
	keep := max(1, int(math.Ceil(float64(st.Limit)*reserve)))
	n := st.Limit - st.InFlight - st.Held - keep
	if st.BusyShare > st.Floor+busyMargin {
		if st.InFlight > 0 {
			return 0
		}
		return min(n, 1)
	}
	return n
}

// Spare reports how many background calls for model could start now: the
// spare slots (beyond the reserve) of the primaries that serve it and are
// not closed. A background call may still be Deferred when others take the
// slots first. It never blocks.
func (r *Router) Spare(model string, bg Background) int {
	if bg.Reserve <= 0 || math.IsNaN(bg.Reserve) {
		bg.Reserve = DefaultReserve
	}
	t := r.tab.Load()
	now := r.now()
	n := 0
	for _, g := range t.groups {
		for _, b := range g.backends {
			if !b.serves(model) || !b.closedUntil(now, t.cool).IsZero() {
				continue
			}
			n += max(0, spare(b, bg.Reserve))
		}
	}
	return n
}

// Serves reports whether a backend of the applied config serves model.
func (r *Router) Serves(model string) bool { return r.tab.Load().serves(model) }

// nextBackground admits a background call's attempt on the first candidate
// with spare room, or returns nil.
func (c *call) nextBackground(ctx context.Context, cands []*backend) *attempt {
	bg, _ := backgroundOf(ctx)
	for _, b := range cands {
		if spare(b, bg.Reserve) <= 0 {
			c.noteFull(max(b.lim.Wait(), time.Millisecond))
			continue
		}
		if a := c.claim(ctx, b, detourv1.Source_SOURCE_LIVE, false); a != nil {
			return a
		}
	}
	return nil
}

// deferred is the failure of a background call that found no spare room.
func (c *call) deferred() error {
	wait := cmpOr(c.limitWait, time.Second)
	if !c.openUntil.IsZero() && !c.limited {
		wait = max(c.openUntil.Sub(c.r.now()), time.Millisecond)
	}
	return &Error{Code: Deferred, Message: "no backend has spare capacity for a background call now", RetryAfter: wait}
}

// runBackground makes a background attempt that an interactive call may
// preempt (see reclaim).
func (c *call) runBackground(ctx context.Context, a *attempt, try tryFunc) (*attempt, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	h := a.b.bg.add(cancel)
	c.r.do(actx, a, try)
	a.b.bg.remove(h)
	if ctx.Err() == nil && errors.Is(context.Cause(actx), ErrPreempted) {
		c.upstream += a.elapsed
		c.last = a
		return nil, &Error{Code: Deferred, Message: "the background call gave its slot to an interactive call",
			RetryAfter: time.Millisecond, Attempts: c.attempts, Backend: a.b.cfg.Name, Region: a.b.region, Err: ErrPreempted}
	}
	return c.merge(ctx, a)
}

// reclaim takes a slot back from a background attempt for an interactive
// call that found no room on any candidate: on the first candidate where a
// background attempt runs, that attempt is cancelled and the call waits for
// the slot it frees (in the backend's queue, which the slot is handed to).
func (c *call) reclaim(ctx context.Context, cands []*backend) *attempt {
	for _, b := range cands {
		if b.bg.preempt() {
			c.r.opts.Metrics.Preempted(b.cfg.Name)
			c.reclaiming = true
			a := c.claim(ctx, b, detourv1.Source_SOURCE_LIVE, true)
			c.reclaiming = false
			return a
		}
	}
	return nil
}

// bgAttempts are the background attempts in flight on one backend, newest
// last. It is safe for concurrent use.
type bgAttempts struct {
	mu   sync.Mutex
	next uint64
	run  []bgAttempt
}

type bgAttempt struct {
	id     uint64
	cancel context.CancelCauseFunc
}

func (s *bgAttempts) add(cancel context.CancelCauseFunc) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	s.run = append(s.run, bgAttempt{id: s.next, cancel: cancel})
	return s.next
}

func (s *bgAttempts) remove(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, a := range s.run {
		if a.id == id {
			s.run = append(s.run[:i], s.run[i+1:]...)
			return
		}
	}
}

// preempt cancels the newest background attempt (the one that has done the
// least work), and reports whether there was one.
func (s *bgAttempts) preempt() bool {
	s.mu.Lock()
	if len(s.run) == 0 {
		s.mu.Unlock()
		return false
	}
	a := s.run[len(s.run)-1]
	s.run = s.run[:len(s.run)-1]
	s.mu.Unlock()
	a.cancel(ErrPreempted)
	return true
}
