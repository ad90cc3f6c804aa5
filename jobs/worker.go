package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/router"
)

// busyBase is the first backoff after a busy answer within a run.
const busyBase = 50 * time.Millisecond

// maxRuns bounds the runs of a job that never ended (its replica died, or
// a bug): River then gives it up, FAILED. Busy answers and waits for
// capacity put the job back without using a run.
const maxRuns = 10

// worker runs jobs: it waits in its replica's gate for spare capacity, makes
// the call through the router as a background call, and records the
// outcome, or puts the job back with a backoff.
type worker struct {
	river.WorkerDefaults[args]
	e *Engine
}

// Timeout bounds a run (River cancels its context after it).
func (w *worker) Timeout(*river.Job[args]) time.Duration { return w.e.cfg.AttemptTimeout }

// Work runs one job. It returns nil once an answer is recorded, a
// river.JobCancel once a failure or an expiry is (nothing runs it again), a
// river.JobSnooze to put it back for later, and the context's error when
// the job was cancelled (River records that) or the run timed out.
func (w *worker) Work(ctx context.Context, job *river.Job[args]) error {
	e, a := w.e, job.Args
	class := classLabel(job.Priority)
	if !a.NotAfter.IsZero() && !time.Now().Before(a.NotAfter) {
		return w.expire(ctx, job)
	}
	req := &detourv1.CompleteRequest{}
	if err := proto.Unmarshal(a.Request, req); err != nil {
		return w.fail(ctx, job, status.New(codes.Internal, "the stored request could not be read"))
	}
	callCtx, cancel := context.WithDeadline(ctx, a.NotAfter)
	defer cancel()
	callCtx = auth.WithTenant(router.WithBackground(callCtx, router.Background{Reserve: e.cfg.Reserve}), a.Tenant)
	holdUntil := time.Now().Add(e.cfg.Hold)
	busy := 0 // busy answers in this run
	for {
		if !e.cfg.Router.Serves(req.GetModel()) {
			// No spare capacity will ever come: the call fails as a Complete
			// call would (the router's unknown model).
			if _, err := e.cfg.Router.Complete(callCtx, req); err != nil {
				return w.fail(ctx, job, e.cfg.Status(err))
			}
		}
		if !e.gate.wait(callCtx, a.Tenant, req.GetModel(), time.Until(holdUntil)) {
			if callCtx.Err() != nil {
				return w.ended(ctx, callCtx, job)
			}
			e.cfg.Metrics.JobDeferred("no_room")
			return w.wait(job, e.cfg.Hold)
		}
		resp, err := e.cfg.Router.Complete(callCtx, req)
		if err == nil {
			b, err := proto.Marshal(resp)
			if err != nil {
				return w.fail(ctx, job, status.New(codes.Internal, "the answer could not be stored"))
			}
			if err := river.RecordOutput(ctx, output{State: outSucceeded, Response: b}); err != nil {
				return err // River runs it again
			}
			e.cfg.Metrics.JobFinished(class, outSucceeded)
			return nil
		}
		if callCtx.Err() != nil {
			return w.ended(ctx, callCtx, job)
		}
		var re *router.Error
		if !errors.As(err, &re) {
			return w.fail(ctx, job, e.cfg.Status(err))
		}
		switch re.Code {
		case router.Deferred:
			if errors.Is(err, router.ErrPreempted) {
				e.cfg.Metrics.JobDeferred("preempted")
				return w.wait(job, 0)
			}
			if time.Now().Before(holdUntil) {
				continue // the slot went to another: wait in the gate again
			}
			e.cfg.Metrics.JobDeferred("no_room")
			return w.wait(job, re.RetryAfter)
		case router.Unavailable, router.Exhausted, router.OverQuota:
			e.cfg.Metrics.JobDeferred("busy")
			// A short backoff here while the run's hold lasts; then back to
			// the queue, with a longer one.
			busy++
			ceil := min(busyBase<<min(busy-1, 8), e.cfg.MaxBackoff)
			d := max(ceil/2+time.Duration(rand.Int64N(int64(ceil/2)+1)), re.RetryAfter)
			if time.Now().Add(d).After(holdUntil) {
				return w.snooze(job, re.RetryAfter)
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-callCtx.Done():
				t.Stop()
				return w.ended(ctx, callCtx, job)
			}
			continue
		}
		return w.fail(ctx, job, e.cfg.Status(err))
	}
}

// ended handles a run whose call context ended: the job's not_after passed
// (EXPIRED), the caller cancelled it (River records CANCELED), or the run
// timed out or its replica is stopping (the job goes back to the queue).
func (w *worker) ended(ctx, callCtx context.Context, job *river.Job[args]) error {
	switch {
	case !time.Now().Before(job.Args.NotAfter):
		return w.expire(ctx, job)
	case errors.Is(context.Cause(ctx), rivertype.ErrJobCancelledRemotely):
		w.e.cfg.Metrics.JobFinished(classLabel(job.Priority), "canceled")
		return context.Cause(ctx)
	}
	// Stopping (Engine.Close) or the run's timeout: put it back at once for
	// this or another replica, without using a run.
	return river.JobSnooze(0)
}

// snooze puts the job back in the queue after a busy answer, for a
// full-jitter exponential backoff that grows with the times it was put back
// (up to 16 x 500ms), at least hint (a Retry-After), at most MaxBackoff and
// never past its not_after.
func (w *worker) snooze(job *river.Job[args], hint time.Duration) error {
	ceil := min(500*time.Millisecond<<min(snoozes(job), 4), w.e.cfg.MaxBackoff)
	return w.snoozeFor(job, ceil/2+time.Duration(rand.Int64N(int64(ceil/2)+1)), hint)
}

// wait puts the job back after a run found no spare capacity: not a
// backoff (the backends are fine, others' calls took the room) but the
// time room should take to free, 0.5-1 x hint, at least 100ms and at most
// Hold. The job goes behind the jobs queued meanwhile.
func (w *worker) wait(job *river.Job[args], hint time.Duration) error {
	d := min(max(hint, 100*time.Millisecond), w.e.cfg.Hold)
	return w.snoozeFor(job, d/2+time.Duration(rand.Int64N(int64(d/2)+1)), 0)
}

func (w *worker) snoozeFor(job *river.Job[args], d, hint time.Duration) error {
	d = max(d, min(hint, w.e.cfg.MaxBackoff))
	if left := time.Until(job.Args.NotAfter); d > left {
		d = max(left, 0)
	}
	return river.JobSnooze(d)
}

// snoozes is how many times the job was put back (River keeps the count in
// its metadata).
func snoozes(job *river.Job[args]) int {
	var m struct {
		Snoozes int `json:"snoozes"`
	}
	_ = json.Unmarshal(job.Metadata, &m)
	return m.Snoozes
}

// expire records the job's expiry.
func (w *worker) expire(ctx context.Context, job *river.Job[args]) error {
	st := status.New(codes.DeadlineExceeded, expiredError().GetMessage())
	if err := river.RecordOutput(ctx, output{State: outExpired, Status: statusBytes(st)}); err != nil {
		return err
	}
	w.e.cfg.Metrics.JobFinished(classLabel(job.Priority), outExpired)
	return river.JobCancel(errors.New("expired"))
}

// fail records the job's failure with the status a Complete call would
// have returned.
func (w *worker) fail(ctx context.Context, job *river.Job[args], st *status.Status) error {
	if err := river.RecordOutput(ctx, output{State: outFailed, Status: statusBytes(st)}); err != nil {
		return err
	}
	w.e.cfg.Metrics.JobFinished(classLabel(job.Priority), outFailed)
	return river.JobCancel(st.Err())
}

func statusBytes(st *status.Status) []byte {
	b, _ := proto.Marshal(st.Proto())
	return b
}

// retryPolicy runs a job again soon after a run that did not end (its
// replica died, or it panicked): 1s, 2s, 4s, ... up to max.
type retryPolicy struct{ max time.Duration }

func (p retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().Add(min(time.Second<<min(max(job.Attempt-1, 0), 16), p.max))
}
