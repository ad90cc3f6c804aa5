package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// callFunc makes one call. Its error's gRPC status code classifies the
// outcome (nil is OK).
type callFunc func(ctx context.Context) error

// sample is one finished call. Start is the intended start, relative to the
// start of the run (for an open loop, the scheduled time, so queueing in the
// generator counts against the latency rather than hiding it).
type sample struct {
	Start time.Duration
	Lat   time.Duration
	Code  codes.Code
	Err   error // nil when Code is OK
}

// End is when the call finished, relative to the start of the run.
func (s sample) End() time.Duration { return s.Start + s.Lat }

// run is the outcome of one load run.
type run struct {
	Began   time.Time
	Elapsed time.Duration // from the first call's start to the last call's end
	Samples []sample
	Skipped int // open loop: calls not sent because maxInFlight was reached
}

// codeGenOverload marks a call the open-loop generator did not send because
// too many were in flight: the machine, not the system under test, ran out.
const codeGenOverload = codes.Code(100)

// codeTruncated marks a stream that ended with status OK but without a
// finish reason: an answer silently cut short.
const codeTruncated = codes.Code(101)

// closedLoop runs conc workers, each calling fn back to back, until dur has
// passed or maxCalls calls were started (0: no count bound).
func closedLoop(ctx context.Context, conc int, dur time.Duration, maxCalls int, fn callFunc) *run {
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var started atomic.Int64
	per := make([][]sample, conc)
	began := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			var out []sample
			for ctx.Err() == nil {
				if maxCalls > 0 && started.Add(1) > int64(maxCalls) {
					break
				}
				t0 := time.Now()
				err := fn(context.WithoutCancel(ctx))
				out = append(out, sample{Start: t0.Sub(began), Lat: time.Since(t0), Code: codeOf(err), Err: err})
			}
			per[w] = out
		})
	}
	wg.Wait()
	r := &run{Began: began, Elapsed: time.Since(began)}
	for _, p := range per {
		r.Samples = append(r.Samples, p...)
	}
	return r
}

// openLoop starts calls at rate per second for dur, each in its own
// goroutine, whatever the answers do; at most maxInFlight are outstanding
// (beyond that a due call is skipped and counted). rateAt, when not nil,
// overrides rate as a function of the time since the start. It returns once
// every started call has finished; callers bound each call with a deadline.
func openLoop(ctx context.Context, rate float64, dur time.Duration, maxInFlight int, rateAt func(time.Duration) float64, fn callFunc) *run {
	if rateAt == nil {
		rateAt = func(time.Duration) float64 { return rate }
	}
	// Upper bound on the count, for the sample slice.
	maxRate := rate
	for t := time.Duration(0); t < dur; t += dur / 100 {
		maxRate = max(maxRate, rateAt(t))
	}
	capacity := int(maxRate*dur.Seconds()) + 16
	samples := make([]sample, 0, capacity)
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
				samples = append(samples, sample{Start: at, Code: codeGenOverload})
				mu.Unlock()
				continue
			}
			inflight.Add(1)
			wg.Go(func() {
				defer inflight.Add(-1)
				err := fn(ctx)
				s := sample{Start: at, Lat: time.Since(began) - at, Code: codeOf(err), Err: err}
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
	r := &run{Began: began, Elapsed: time.Since(began), Samples: samples, Skipped: skipped}
	return r
}

func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if errors.Is(err, errTruncated) {
		return codeTruncated
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled
	}
	return status.Code(err)
}

// summary is what tables report about a set of samples.
type summary struct {
	N, OK          int
	Codes          map[codes.Code]int
	P50, P99, P999 time.Duration
	Max            time.Duration
	Throughput     float64 // OK calls per second of the run
}

func summarize(ss []sample, elapsed time.Duration) summary {
	s := summary{N: len(ss), Codes: map[codes.Code]int{}}
	lat := make([]time.Duration, 0, len(ss))
	for _, x := range ss {
		s.Codes[x.Code]++
		if x.Code == codes.OK {
			s.OK++
		}
		if x.Code != codeGenOverload {
			lat = append(lat, x.Lat)
		}
	}
	slices.Sort(lat)
	s.P50, s.P99, s.P999 = pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	if elapsed > 0 {
		s.Throughput = float64(s.OK) / elapsed.Seconds()
	}
	return s
}

// pct is the q quantile of sorted (nearest rank).
func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// successRate is OK / N as a fraction.
func (s summary) successRate() float64 {
	if s.N == 0 {
		return 0
	}
	return float64(s.OK) / float64(s.N)
}

// codesText lists the non-OK codes, most frequent first.
func (s summary) codesText() string {
	type kv struct {
		c codes.Code
		n int
	}
	var l []kv
	for c, n := range s.Codes {
		if c != codes.OK {
			l = append(l, kv{c, n})
		}
	}
	if len(l) == 0 {
		return "-"
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n })
	var b strings.Builder
	for i, x := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		name := x.c.String()
		switch x.c {
		case codeGenOverload:
			name = "generator-overload"
		case codeTruncated:
			name = "TRUNCATED-OK"
		}
		fmt.Fprintf(&b, "%s %d", name, x.n)
	}
	return b.String()
}

// window keeps the samples whose start lies in [from, to).
func window(ss []sample, from, to time.Duration) []sample {
	var out []sample
	for _, s := range ss {
		if s.Start >= from && s.Start < to {
			out = append(out, s)
		}
	}
	return out
}

// ms formats d in milliseconds with enough digits for sub-millisecond values.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return fmt.Sprintf("%.3f", v)
	case v < 1000:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func pctText(f float64) string {
	switch {
	case f == 1:
		return "100%"
	case f >= 0.999:
		return fmt.Sprintf("%.3f%%", f*100)
	}
	return fmt.Sprintf("%.2f%%", f*100)
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// mdTable renders a Markdown table.
func mdTable(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

// dial opens a plaintext gRPC client connection to addr.
func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// request is the standard benchmark request: a short chat prompt.
func request(prompt string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model:    "deepseek-chat",
		Messages: []*detourv1.Message{{Role: "user", Content: prompt}},
		Cache:    &detourv1.CacheHints{NoCache: true},
	}
}

// unaryCall returns a callFunc making Complete calls on c with timeout each.
func unaryCall(c detourv1.RouterClient, req *detourv1.CompleteRequest, timeout time.Duration) callFunc {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := c.Complete(ctx, req)
		return err
	}
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// machine describes where the run happens, for the record.
func machine() string {
	return fmt.Sprintf("%s, %d cores (GOMAXPROCS %d), %s", time.Now().UTC().Format("2006-01-02"), numCPU(), gomaxprocs(), goVersion())
}

func numCPU() int       { return runtime.NumCPU() }
func gomaxprocs() int   { return runtime.GOMAXPROCS(0) }
func goVersion() string { return runtime.Version() }

// loadavg is the 1-minute load average, to show what else ran.
func loadavg() string { return startLoad }

// startLoad is the 1-min load average when bench started, before it put any
// load on the machine (read at the end of a run, it would mostly measure
// the run itself).
var startLoad = readLoadavg()

func readLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + " (1-min avg at start)"
}

// atomicCounter counts from many goroutines.
type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) add()     { c.n.Add(1) }
func (c *atomicCounter) get() int { return int(c.n.Load()) }
