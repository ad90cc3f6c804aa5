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
func watch(ctx context.Context, a *attempt) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{gap: a.timeout, queue: a.b.cfg.QueueTimeout.D(), start: time.Now(), cancel: cancel}
	if w.queue <= 0 {
		w.queue = w.gap
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(min(w.gap, w.queue), w.check)
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
	}
}

// relay opens a stream on a.b and forwards it to send. Before the first chunk
// a failure is not committed, so the router may try elsewhere; after it, the
// stream belongs to a.b and a failure ends the call. The attempt's watchdog
// bounds the silences and the wait in the provider's queue: chunks
// (reasoning and tool-call pieces included) and keep-alives are signs of
// life.
func relay(ctx context.Context, a *attempt, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) {
	ctx, w := watch(ctx, a)
	defer w.stop()
	start := time.Now()

	st, err := a.b.prov.Stream(ctx, req)
	if err != nil {
		w.fail(ctx, a, err)
		return
	}
	defer st.Close()
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if !a.committed {
				a.err, a.class = fmt.Errorf("backend %s: stream ended before any chunk", a.b.cfg.Name), breaker.Failed
				return
			}
			a.class = breaker.OK
			return
		}
		if err != nil {
			w.fail(ctx, a, err)
			return
		}
		w.Answering()
		if !a.committed {
			a.ttfc = time.Since(start)
		}
		ch.ServedBy, ch.Attempts = a.b.servedBy, int32(a.n)
		ch.Source = provenance(a.src, ch.GetSource())
		a.committed = true
		// The gap measures the backend, not the caller: it does not run
		// while detour waits for a slow reader to take the chunk.
		w.sending.Store(true)
		err = send(ch)
		w.KeepAlive()
		w.sending.Store(false)
		if err != nil {
			// The caller is gone or its stream broke: not the backend's fault.
			a.err, a.class = err, breaker.Canceled
			return
		}
	}
}
