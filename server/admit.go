package server

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/router"
)

// Admission control: a replica runs at most limits.max_inflight Router calls
// at once and refuses the next one at once with RESOURCE_EXHAUSTED and a
// RetryInfo, instead of queueing it behind calls it cannot serve in time.
//
// The check is a grpc.InTapHandle: it runs on the connection's reader when
// the call's headers arrive, before grpc-go starts the call's goroutine or
// reads its request, so a refused call costs a few microseconds and never
// reaches authentication, validation, tenant quotas, the router or a
// breaker. grpc-go (v1.85) writes a tap's status with its details
// (grpc-status-details-bin), so the RetryInfo reaches the caller.
//
// An admitted call is counted until its stream ends: the count drops when
// grpc-go cancels the stream's context, which it does on every way out
// (status written, reset by the client, deadline, connection closed), so a
// call whose request fails to decode before any interceptor runs is not
// leaked either. When a client resets a call or its deadline passes, the
// slot frees at that moment, while the handler may still be finishing its
// work: for that moment the work in progress can exceed the limit a little.
//
// Known cost in grpc-go v1.85: a refused call's stream context is not
// cancelled, so when the caller sent a deadline its timer lives until that
// deadline (a few hundred bytes per refused call, an estimate). The tap
// cannot release it; it is bounded by the callers' deadlines.

// Retry hint of a refused call: shedDelay plus up to shedJitter. A slot frees
// when any call ends, which for LLM calls may be milliseconds or seconds
// away, so no delay predicts it; a short one costs a refused caller little
// next to an answer's own latency (and its retry may land on another
// replica at once), and the jitter, as wide as the base, spreads a refused
// burst so that it does not come back as one wave.
const (
	shedDelay  = 250 * time.Millisecond
	shedJitter = 250 * time.Millisecond
)

// shedLogEvery bounds the "shedding" log lines: one per interval at most,
// whatever the rate of refused calls.
const shedLogEvery = 10 * time.Second

// admission counts the Router calls in flight and refuses those beyond the
// limit of the router's live config. It is safe for concurrent use and never
// blocks.
type admission struct {
	router  *router.Router
	metrics *metrics.Metrics
	log     *slog.Logger

	inflight  atomic.Int64
	shedCount atomic.Int64 // refused since the last log line
	logged    atomic.Int64 // unix nanoseconds of the last log line
}

// newAdmission returns the admission control of a server routing through r;
// m's in-flight gauges read it.
func newAdmission(r *router.Router, m *metrics.Metrics, log *slog.Logger) *admission {
	a := &admission{router: r, metrics: m, log: log}
	m.Admission(func() int { return int(a.inflight.Load()) }, a.limit)
	return a
}

// limit is the live limits.max_inflight; 0 means none.
func (a *admission) limit() int { return a.router.Snapshot().Config.Limits.MaxInflight }

// admitted returns the method label of a call subject to admission, or ""
// for every other method (health, reflection, Admin, unknown methods).
func admitted(fullMethod string) string {
	switch fullMethod {
	case detourv1.Router_Complete_FullMethodName:
		return "Complete"
	case detourv1.Router_StreamComplete_FullMethodName:
		return "StreamComplete"
	}
	return ""
}

// acquire counts one more call unless limit (> 0) calls already run. Calls
// are counted with no limit too, so that a limit set live starts from the
// true count.
func (a *admission) acquire(limit int) bool {
	if limit <= 0 {
		a.inflight.Add(1)
		return true
	}
	for {
		n := a.inflight.Load()
		if n >= int64(limit) {
			return false
		}
		if a.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (a *admission) release() { a.inflight.Add(-1) }

// tap is the server's grpc.InTapHandle. grpc-go runs it under the
// connection's lock: it must not block.
func (a *admission) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := admitted(info.FullMethodName)
	if method == "" {
		return ctx, nil
	}
	limit := a.limit()
	if !a.acquire(limit) {
		return ctx, a.shed(method, limit)
	}
	context.AfterFunc(ctx, a.release)
	return ctx, nil
}

// shed records a refused call and returns its status.
func (a *admission) shed(method string, limit int) error {
	a.metrics.Shed(method)
	n := a.shedCount.Add(1)
	now := time.Now().UnixNano()
	if last := a.logged.Load(); now-last >= int64(shedLogEvery) && a.logged.CompareAndSwap(last, now) {
		a.shedCount.Add(-n)
		// Not here: the tap runs under the connection's lock, and a log
		// write may wait on a slow stderr.
		go a.log.Warn("shedding calls at the in-flight limit", "max_inflight", limit, "shed_since_last_line", n)
	}
	delay := shedDelay + rand.N(shedJitter)
	delay = delay.Round(time.Millisecond)
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(
		"detour is at its in-flight limit (%d calls); retry after %v or on another replica", limit, delay))
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)}); err == nil {
		st = d
	}
	return st.Err()
}
