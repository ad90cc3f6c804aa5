package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
)

// errIdle cancels an attempt whose upstream went silent (no chunk, no
// keep-alive) for longer than its attempt timeout.
var errIdle = errors.New("upstream silent for longer than the attempt timeout")

// errQueued cancels an attempt that the upstream held, keep-alives and all,
// for longer than the backend's queue_timeout before it started to answer.
var errQueued = errors.New("upstream held the call past its queue_timeout without answering")

// errFirstToken cancels a stream attempt that sent no token (content,
// reasoning or a tool call) within its first-token bound.
var errFirstToken = errors.New("upstream sent no token within the first-token timeout")

// errHedgeLost ends a hedged stream attempt whose rival sent a token first.
var errHedgeLost = errors.New("another attempt of the hedged stream sent a token first")

// watchdog bounds one attempt by the upstream's signs of life rather than by
// a fixed deadline: every chunk and every keep-alive (provider.Progress)
// restarts the gap, a.timeout; until the answer starts, the whole wait is
// also bounded by the backend's queue_timeout (zero: a.timeout, so that
// keep-alives alone never extend it). A long think phase streamed as
// reasoning chunks is therefore alive, and so is a call that waits in the
// provider's queue while the provider sends keep-alives, up to
// queue_timeout.
//
// Signs of life only store a time; the timer re-arms itself when it fires
// early. A watchdog is safe for concurrent use.
type watchdog struct {
	gap, queue time.Duration
	firstToken time.Duration // 0: no bound of its own
	tokened    atomic.Bool
	start      time.Time
	last       atomic.Int64 // time.Since(start) of the last sign of life
	answering  atomic.Bool
	sending    atomic.Bool // a chunk is on its way to the caller: the gap waits
	cancel     context.CancelCauseFunc

	mu      sync.Mutex // guards timer and stopped
	timer   *time.Timer
	stopped bool
}

var _ provider.Progress = (*watchdog)(nil)

// watch starts the watchdog of attempt a. The returned context, for the
// provider call, carries it as the call's provider.Progress and ends when it
// fires; call stop when the attempt is over.
func watch(ctx context.Context, a *attempt, firstToken time.Duration) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{gap: a.timeout, queue: a.b.cfg.QueueTimeout.D(), firstToken: firstToken, start: time.Now(), cancel: cancel}
	if w.queue <= 0 {
		w.queue = w.gap
	}
	first := min(w.gap, w.queue)
	if w.firstToken > 0 {
		first = min(first, w.firstToken)
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(first, w.check)
	w.mu.Unlock()
	return provider.WithProgress(ctx, w), w
}

// KeepAlive records a sign of life.
func (w *watchdog) KeepAlive() { w.last.Store(int64(time.Since(w.start))) }

// Answering records that the answer started: queue_timeout no longer
// applies.
func (w *watchdog) Answering() {
	w.answering.Store(true)
	w.KeepAlive()
}

// Token records the first token: the first-token bound no longer applies.
func (w *watchdog) Token() {
	w.tokened.Store(true)
	w.Answering()
}

// check runs when a bound may have passed: it ends the attempt, or sets the
// timer for the nearest bound still ahead.
func (w *watchdog) check() {
	// sending before last: relay records the sign of life before it
	// clears sending, so a send that just ended is seen in last.
	sending := w.sending.Load()
	now := time.Since(w.start)
	next := w.gap - (now - time.Duration(w.last.Load()))
	if sending {
		next = w.gap
	}
	if !w.answering.Load() {
		if q := w.queue - now; q <= 0 {
			w.cancel(errQueued)
			return
		} else if q < next {
			next = q
		}
	}
	if w.firstToken > 0 && !w.tokened.Load() {
		if f := w.firstToken - now; f <= 0 {
			w.cancel(errFirstToken)
			return
		} else if f < next {
			next = f
		}
	}
	if next <= 0 {
		w.cancel(errIdle)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.timer.Reset(next)
	}
}

// stop ends the watchdog and releases its context.
func (w *watchdog) stop() {
	w.mu.Lock()
	w.stopped = true
	w.timer.Stop()
	w.mu.Unlock()
	w.cancel(nil)
}

// fail records err as a's outcome: an attempt the watchdog ended is Down
// when the upstream went silent, and Busy when it kept the call queued past
// queue_timeout (it is up, but has no room for the call).
func (w *watchdog) fail(ctx context.Context, a *attempt, err error) {
	a.err, a.class = err, breaker.Classify(err)
	switch context.Cause(ctx) {
	case errIdle:
		a.err, a.class = fmt.Errorf("backend %s: %w", a.b.cfg.Name, errIdle), breaker.Down
	case errQueued:
		a.err, a.class = fmt.Errorf("backend %s: %w", a.b.cfg.Name, errQueued), breaker.Busy
	case errFirstToken:
		a.err, a.class = fmt.Errorf("backend %s: %w", a.b.cfg.Name, errFirstToken), breaker.Busy
	}
}

// maxHeld bounds the chunks without a token (the role alone, empty ones)
// held back before the first token; past it they go to the caller.
const maxHeld = 16

// relay opens a stream on a.b and passes it to the caller through sc.
// Chunks without a token are held back until the first token, so that until
// then a failure is not committed and the router may try elsewhere (and a
// hedged start may pick the attempt whose token comes first); after it the
// stream belongs to a.b, and a failure ends the call unless sc may continue
// it elsewhere (a.resumable). The attempt's watchdog bounds the silences,
// the wait in the provider's queue and the wait for the first token: chunks
// and keep-alives are signs of life. An upstream stream that ends without a
// finish reason is truncated: a failure, never a complete answer.
func relay(ctx context.Context, a *attempt, sc *streamCall) {
	continued := sc.begin()
	if continued {
		sc.metrics.Continuation(false)
	}
	ctx, w := watch(ctx, a, sc.firstTokenFor(a.b))
	defer w.stop()
	start := time.Now()

	st, err := a.b.prov.Stream(ctx, sc.request(a.b))
	if err != nil {
		w.fail(ctx, a, err)
		return
	}
	defer st.Close()
	var held []*detourv1.CompleteChunk
	finished := false
	pass := func(ch *detourv1.CompleteChunk) bool {
		ch.ServedBy, ch.Attempts = a.b.servedBy, int32(a.n)
		ch.Source = provenance(a.src, ch.GetSource())
		a.committed = true
		// The gap measures the backend, not the caller: it does not run
		// while detour waits for a slow reader to take the chunk.
		w.sending.Store(true)
		err := sc.deliver(ch, continued)
		w.KeepAlive()
		w.sending.Store(false)
		if err != nil {
			// The caller is gone or its stream broke: not the backend's fault.
			a.err, a.class = err, breaker.Canceled
			return false
		}
		return true
	}
	take := func() bool { // the stream is a's to send from now on
		if a.gate != nil && !a.gate.win(a) {
			a.err, a.class = errHedgeLost, breaker.Canceled
			return false
		}
		for _, h := range held {
			if continued && !output(h) && h.GetFinishReason() == "" && h.GetUsage() == nil {
				continue // a continuation's own role chunk: the caller has one
			}
			if !pass(h) {
				return false
			}
		}
		held = nil
		return true
	}
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			switch {
			case !a.committed && !finished:
				a.err, a.class = fmt.Errorf("backend %s: stream ended before any token", a.b.cfg.Name), breaker.Failed
			case !finished:
				a.b.m.Truncated()
				// Busy, as a break after the first token below.
				a.err, a.class = fmt.Errorf("backend %s: %w: ended without a finish reason", a.b.cfg.Name, provider.ErrIncomplete), breaker.Busy
				a.broke = true
				a.resumable = sc.canContinue()
			case take():
				a.class = breaker.OK
			}
			return
		}
		if err != nil {
			w.fail(ctx, a, err)
			if errors.Is(err, provider.ErrIncomplete) {
				a.b.m.Truncated()
			}
			// A stream that breaks after its first token is busy for the
			// backend's breaker and limits, not failed or down: the backend
			// is up and answering, as with a busy answer, and a provider
			// that breaks a share of its streams is capacity, not an
			// outage. Counted as failures, runs of breaks (five in a row
			// about once in 600 streams at a 30% break rate) opened
			// healthy backends' breakers and left continuations nowhere to
			// go. A stream that goes silent mid-way (the gap timeout)
			// stays down. The adaptive limit learns nothing from a break:
			// it says nothing about load (see Router.do).
			if a.committed && (a.class == breaker.Failed || (a.class == breaker.Down && context.Cause(ctx) != errIdle)) {
				a.class, a.broke = breaker.Busy, true
			}
			if a.committed && a.class != breaker.Canceled {
				a.resumable = sc.canContinue()
			}
			return
		}
		w.Answering()
		finished = finished || ch.GetFinishReason() != ""
		if !a.committed {
			if !output(ch) && len(held) < maxHeld && ch.GetFinishReason() == "" {
				held = append(held, ch)
				continue
			}
			a.ttfc = time.Since(start)
			w.Token()
			a.b.m.FirstToken(a.ttfc)
			held = append(held, ch)
			if !take() {
				return
			}
			continue
		}
		if !pass(ch) {
			return
		}
	}
}
