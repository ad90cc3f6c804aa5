// Package load drives calls at a system under test and summarises what came
// back: an open loop (calls started on a schedule, whatever the answers do)
// and a closed loop (callers calling back to back), the record of every
// call (Sample), and the summaries a report prints and a judge reads
// (Summary: counts by gRPC code, percentiles, throughput).
//
//	r := load.OpenLoop(ctx, 200, 10*time.Second, 20000, nil, load.Unary(client, load.Request("hello"), 5*time.Second))
//	s := load.Summarize(r.Samples, r.Elapsed)
//	fmt.Println(s.SuccessRate(), s.P99, s.CodesText())
//
// A Call's error classifies its outcome by its gRPC status code (nil is OK);
// two codes of its own mark a call the generator never sent
// (CodeGenOverload) and a stream that ended OK without a finish reason
// (CodeTruncated).
package load

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Call makes one call. Its error's gRPC status code classifies the outcome
// (nil is OK). It must honour ctx and be safe for concurrent use.
type Call func(ctx context.Context) error

// Sample is one finished call. Start is the intended start, relative to the
// start of the run (for an open loop, the scheduled time, so queueing in the
// generator counts against the latency rather than hiding it).
type Sample struct {
	Start time.Duration
	Lat   time.Duration
	Code  codes.Code
	Err   error // nil when Code is OK
}

// End is when the call finished, relative to the start of the run.
func (s Sample) End() time.Duration { return s.Start + s.Lat }

// Run is the outcome of one load run.
type Run struct {
	Began   time.Time
	Elapsed time.Duration // from the first call's start to the last call's end
	Samples []Sample
	Skipped int // open loop: calls not sent because maxInFlight was reached
}

// CodeGenOverload marks a call the open-loop generator did not send because
// too many were in flight: the machine, not the system under test, ran out.
const CodeGenOverload = codes.Code(100)

// CodeTruncated marks a stream that ended with status OK but without a
// finish reason: an answer silently cut short.
const CodeTruncated = codes.Code(101)

// ErrTruncated is a stream that ended OK without a finish reason; CodeOf
// makes it CodeTruncated.
var ErrTruncated = errors.New("stream ended OK without finish_reason")

// ClosedLoop runs conc workers, each calling fn back to back, until dur has
// passed or maxCalls calls were started (0: no count bound). A call in
// flight when dur ends runs to its own deadline.
func ClosedLoop(ctx context.Context, conc int, dur time.Duration, maxCalls int, fn Call) *Run {
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var started atomic.Int64
	per := make([][]Sample, conc)
	began := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			var out []Sample
			for ctx.Err() == nil {
				if maxCalls > 0 && started.Add(1) > int64(maxCalls) {
					break
				}
				t0 := time.Now()
				err := fn(context.WithoutCancel(ctx))
				out = append(out, Sample{Start: t0.Sub(began), Lat: time.Since(t0), Code: CodeOf(err), Err: err})
			}
			per[w] = out
		})
	}
	wg.Wait()
	r := &Run{Began: began, Elapsed: time.Since(began)}
	for _, p := range per {
		r.Samples = append(r.Samples, p...)
	}
	return r
}

// OpenLoop starts calls at rate per second for dur, each in its own
// goroutine, whatever the answers do; at most maxInFlight are outstanding
// (beyond that a due call is skipped and recorded as CodeGenOverload).
// rateAt, when not nil, overrides rate as a function of the time since the
// start. It returns once every started call has finished; callers bound
// each call with a deadline.
func OpenLoop(ctx context.Context, rate float64, dur time.Duration, maxInFlight int, rateAt func(time.Duration) float64, fn Call) *Run {
	if rateAt == nil {
		rateAt = func(time.Duration) float64 { return rate }
	}
	// Upper bound on the count, for the sample slice.
	maxRate := rate
	for t := time.Duration(0); t < dur; t += dur / 100 {
		maxRate = max(maxRate, rateAt(t))
	}
	capacity := int(maxRate*dur.Seconds()) + 16
	samples := make([]Sample, 0, capacity)
	var mu sync.Mutex
	var inflight atomic.Int64
	var wg sync.WaitGroup
	began := time.Now()
	skipped := 0
	// next is the scheduled start of the next call; each call moves it on by
	// 1/rate at that moment, so rate changes apply at once.
	next := time.Duration(0)
	tick := time.NewTicker(500 * time.Microsecond)
	defer tick.Stop()
	sent := 0
	for ctx.Err() == nil && next < dur && sent < capacity {
		now := time.Since(began)
		for next <= now && next < dur && sent < capacity {
			at := next
			r := rateAt(at)
			if r <= 0 {
				next += 10 * time.Millisecond
				continue
			}
			next += time.Duration(float64(time.Second) / r)
			sent++
			if int(inflight.Load()) >= maxInFlight {
				skipped++
				mu.Lock()
				samples = append(samples, Sample{Start: at, Code: CodeGenOverload})
				mu.Unlock()
				continue
			}
			inflight.Add(1)
			wg.Go(func() {
				defer inflight.Add(-1)
				err := fn(ctx)
				s := Sample{Start: at, Lat: time.Since(began) - at, Code: CodeOf(err), Err: err}
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
			})
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	wg.Wait()
	return &Run{Began: began, Elapsed: time.Since(began), Samples: samples, Skipped: skipped}
}

// CodeOf classifies a call's error: its gRPC status code, with a context's
// deadline or cancellation as DeadlineExceeded or Canceled and ErrTruncated
// as CodeTruncated.
func CodeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if errors.Is(err, ErrTruncated) {
		return CodeTruncated
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled
	}
	return status.Code(err)
}

// CodeName is c's name in reports: gRPC's, or the generator's own codes'.
func CodeName(c codes.Code) string {
	switch c {
	case CodeTruncated:
		return "TRUNCATED-OK"
	case CodeGenOverload:
		return "generator-overload"
	}
	return c.String()
}

// Alternate runs measure for each of n targets in every round, reversing the
// order on odd rounds (A B, B A, ...) so drift on a shared machine falls on
// both alike. It stops at the first error or when ctx ends.
func Alternate(ctx context.Context, rounds, n int, measure func(round, i int) error) error {
	for round := range rounds {
		for k := range n {
			i := k
			if round%2 == 1 {
				i = n - 1 - k
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := measure(round, i); err != nil {
				return err
			}
		}
	}
	return nil
}
