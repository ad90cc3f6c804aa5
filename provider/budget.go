package provider

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// DefaultBodyBudget is the process-wide budget of upstream body bytes
// unless SetBodyBudget says otherwise: room for two answers at the
// per-call cap (16 MiB) at once, or thousands of ordinary ones (an answer
// is a few KiB; a stream holds the size of its largest event). Under 50
// calls at once to an upstream sending 200 MB bodies, detour's RSS peaks
// at about 150 MiB with it (bench hostile, RELIABILITY.md).
const DefaultBodyBudget = 32 << 20

// ErrBodyBudget is wrapped when an upstream body cannot be read because
// the bodies being read by every client of the process already hold the
// whole budget (SetBodyBudget). It comes in an *HTTPError with the
// answer's 2xx status, which breaker.Classify sorts as Failed: the call is
// tried on another backend, and the backend counts it. A hostile upstream
// sending huge bodies is the one most likely to meet it, since the budget
// is taken as bytes arrive; its breaker then opens and frees the budget.
var ErrBodyBudget = errors.New("upstream body budget exhausted")

// bodies is the process-wide budget: every OpenAI client reserves the
// bytes it holds of an upstream body (a unary answer or error body while
// it is read and decoded, a stream's event buffers while it is open) and
// gives them back when done.
var bodies budget

// SetBodyBudget sets the process-wide budget of bytes held from upstream
// bodies at once, across every backend and call (detour serve
// --upstream-body-budget). n <= 0 restores DefaultBodyBudget. Bytes
// already held stay held; the new limit applies to the next reservation.
// It is safe to call at any time.
func SetBodyBudget(n int64) {
	bodies.limit.Store(max(n, 0))
}

// BodyBytesHeld returns the upstream body bytes the process holds now.
func BodyBytesHeld() int64 { return bodies.held.Load() }

// budget is a byte semaphore that never blocks: a reservation that does
// not fit fails at once. Safe for concurrent use.
type budget struct {
	limit atomic.Int64 // 0: DefaultBodyBudget
	held  atomic.Int64
}

func (b *budget) max() int64 {
	if n := b.limit.Load(); n > 0 {
		return n
	}
	return DefaultBodyBudget
}

// take reserves n bytes, or reports false without reserving any.
func (b *budget) take(n int64) bool {
	limit := b.max()
	for {
		h := b.held.Load()
		if h+n > limit {
			return false
		}
		if b.held.CompareAndSwap(h, h+n) {
			return true
		}
	}
}

func (b *budget) give(n int64) { b.held.Add(-n) }

// budgetError is a reservation of n bytes the budget refused. It wraps
// ErrBodyBudget.
type budgetError struct{ detail string }

func overBudget(n int64) error {
	return &budgetError{detail: fmt.Sprintf("%d more bytes would pass the process's budget of %d bytes for upstream bodies (%d held)",
		n, bodies.max(), bodies.held.Load())}
}

func (e *budgetError) Error() string { return ErrBodyBudget.Error() + ": " + e.detail }

func (e *budgetError) Unwrap() error { return ErrBodyBudget }

// hold is one body's reservation. Its zero value holds nothing. It is
// safe for concurrent use: a stream's Close may release it while Recv
// grows it; once released it takes no more.
type hold struct {
	mu       sync.Mutex
	n        int64
	released bool
}

// grow reserves n more bytes, or reports false.
func (h *hold) grow(n int64) bool {
	if n <= 0 {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released || !bodies.take(n) {
		return false
	}
	h.n += n
	return true
}

// release gives every byte back. It may be called more than once.
func (h *hold) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	bodies.give(h.n)
	h.n, h.released = 0, true
}
