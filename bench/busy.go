package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("busy", "a capped primary that turns busy, a second region and a fallback: a client's usual retry recipe calling the primary direct (A) vs through detour (B); success, upstream amplification, failures before the breaker opens", busy)
}

type busyOpts struct {
	rate, cap, busyRate float64
	dur, busyAt         time.Duration
	latency, extra      time.Duration
	timeout             time.Duration
	maxInFlight         int
}

// busyStack is the three upstreams of the scenario, each its own process.
type busyStack struct {
	primary, second, fallback *fake
}

func (s *busyStack) all() []*fake { return []*fake{s.primary, s.second, s.fallback} }

func (s *busyStack) stop() {
	for _, f := range s.all() {
		if f != nil {
			f.stop()
		}
	}
}

func startBusyStack(o busyOpts) (*busyStack, error) {
	s := &busyStack{}
	var err error
	// The primary starts healthy and turns busy at --busy-at.
	if s.primary, err = startFake(fakellm.Config{Name: "primary-a", Region: "primary",
		Settings: fakellm.Settings{Latency: o.latency, Jitter: o.latency / 4, QPS: o.cap}}, false); err != nil {
		return s, err
	}
	if s.second, err = startFake(fakellm.Config{Name: "second-a", Region: "second",
		Settings: fakellm.Settings{Latency: o.latency + o.extra, Jitter: o.latency / 4}}, false); err != nil {
		return s, err
	}
	if s.fallback, err = startFake(fakellm.Config{Name: "fallback", Region: "fallback",
		Settings: fakellm.Settings{Latency: o.latency + 2*o.extra, Jitter: o.latency / 4}}, false); err != nil {
		return s, err
	}
	return s, nil
}

// busyResult is one mode's outcome.
type busyResult struct {
	mode       string
	sum        summary
	upstream   map[string]fakellm.Stats
	amp        float64
	breakerAt  time.Duration // after the primary turned busy; <0: never
	opensEarly int           // primary breaker opens before it turned busy
	failedWin  int           // client calls failed between busy and breaker open
	afterBusy  summary       // calls started after the primary turned busy
	elapsed    time.Duration
	foreign    float64 // cores other processes used during the run
}

func busy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("busy", flag.ContinueOnError)
	o := busyOpts{}
	fs.Float64Var(&o.rate, "rate", 2000, "offered client calls per second (open loop)")
	fs.Float64Var(&o.cap, "cap", 0, "primary's QPS cap (fakellm -qps); 0: rate/2")
	fs.Float64Var(&o.busyRate, "busy-rate", 0.5, "primary's busy rate once it turns busy")
	fs.DurationVar(&o.dur, "duration", 30*time.Second, "how long load is offered")
	fs.DurationVar(&o.busyAt, "busy-at", 5*time.Second, "when the primary turns busy, after the load starts")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "primary's latency (second region: +extra, fallback: +2*extra)")
	fs.DurationVar(&o.extra, "extra", 40*time.Millisecond, "the second region's added latency")
	fs.DurationVar(&o.timeout, "timeout", 120*time.Second, "client timeout per call (both modes)")
	fs.IntVar(&o.maxInFlight, "max-inflight", 100000, "bound on outstanding client calls")
	modes := fs.String("modes", "A,B", "which modes to run: A, B or A,B")
	baseline := fs.Bool("baseline", false, "fault-free run: the primary never turns busy and has no cap")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.cap == 0 {
		o.cap = o.rate / 2
	}
	if *baseline {
		o.busyRate, o.cap = 0, 0
	}
	var results []busyResult
	for _, m := range strings.Split(*modes, ",") {
		m = strings.TrimSpace(strings.ToUpper(m))
		if m != "A" && m != "B" {
			return fmt.Errorf("--modes: unknown mode %q", m)
		}
		r, err := busyRun(ctx, m, o)
		if err != nil {
			return fmt.Errorf("mode %s: %w", m, err)
		}
		results = append(results, r)
	}

	title := "Busy provider (A vs B)"
	if *baseline {
		title += ", fault-free baseline"
	}
	capText := fmt.Sprintf("%.0f QPS cap", o.cap)
	if o.cap == 0 {
		capText = "no cap"
	}
	fmt.Printf("### %s\n\n%s; load %s. Offered %.0f calls/s for %v (open loop); primary: fakellm %s, busy rate %.2f from t=%v, latency %v; second region: latency %v; fallback: latency %v; client timeout %v.\n"+
		"A: HTTP client straight to the primary, up to 3 attempts, backoff 2^n s + U(0,1 s) (n = failed attempts so far, capped 30 s), client token bucket at the primary's QPS (each attempt takes a token). "+
		"B: one gRPC call to detour per client call (detour region \"primary\", backend qps = the cap).\n\n",
		title, machine(), loadavg(), o.rate, o.dur, capText, o.busyRate, o.busyAt, o.latency, o.latency+o.extra, o.latency+2*o.extra, o.timeout)
	var rows [][]string
	for _, r := range results {
		br, win := "-", "-"
		if r.mode == "B" {
			br, win = "never", "-"
			if r.breakerAt >= 0 {
				br = ms(r.breakerAt) + " ms"
				win = fmt.Sprint(r.failedWin)
			}
			if r.opensEarly > 0 {
				br += fmt.Sprintf(" (+%d opens before)", r.opensEarly)
			}
		}
		rows = append(rows, []string{r.mode, fmt.Sprint(r.sum.N), pctText(r.sum.successRate()), pctText(r.afterBusy.successRate()), fmt.Sprintf("%.2f", r.amp),
			ms(r.sum.P50), ms(r.sum.P99), ms(r.sum.Max), br, win, r.sum.codesText(), fmt.Sprintf("%.2f", r.foreign)})
	}
	fmt.Println(mdTable([]string{"mode", "client calls", "success", "success after busy", "amplification", "p50 ms", "p99 ms", "max ms", "breaker open after busy", "failed in that window", "errors", "other processes, cores"}, rows))
	rows = nil
	for _, r := range results {
		for _, n := range []string{"primary-a", "second-a", "fallback"} {
			st := r.upstream[n]
			rows = append(rows, []string{r.mode, n, fmt.Sprint(st.Total), fmt.Sprint(st.OK), fmt.Sprint(st.Busy), fmt.Sprint(st.RateLimited), fmt.Sprint(st.Canceled)})
		}
	}
	fmt.Println("Upstream requests (fakellm /stats):\n\n" + mdTable([]string{"mode", "upstream", "total", "ok", "busy 503", "429", "canceled"}, rows))

	for _, r := range results {
		if r.mode != "B" || *baseline {
			continue
		}
		var miss []string
		if r.sum.successRate() < 0.999 {
			miss = append(miss, fmt.Sprintf("success %s < 99.9%%", pctText(r.sum.successRate())))
		}
		if r.amp > 1.3 {
			miss = append(miss, fmt.Sprintf("amplification %.2f > 1.3", r.amp))
		}
		for _, a := range results {
			if a.mode == "A" && r.sum.P99 >= a.sum.P99 {
				miss = append(miss, "p99 not below A's")
			}
		}
		if r.failedWin > 0 || r.breakerAt < 0 {
			miss = append(miss, "client calls failed before the breaker opened (or it never did)")
		}
		fmt.Printf("B against its targets: %s\n\n", verdictList(miss))
		if len(miss) > 0 {
			return missed("B: %s", strings.Join(miss, "; "))
		}
	}
	return nil
}

func verdictList(miss []string) string {
	if len(miss) == 0 {
		return "pass (success >= 99.9%, amplification <= 1.3, p99 below A's, 0 failures before the breaker opened)"
	}
	return "MISS: " + strings.Join(miss, "; ")
}

func busyRun(ctx context.Context, mode string, o busyOpts) (busyResult, error) {
	res := busyResult{mode: mode, breakerAt: -1, upstream: map[string]fakellm.Stats{}}
	st, err := startBusyStack(o)
	defer st.stop()
	if err != nil {
		return res, err
	}
	var call callFunc
	var breakers func() []breakerEvent
	if mode == "A" {
		call = clientRecipe(st.primary.http, o.cap, o.timeout)
	} else {
		dt, err := startDetour(busyConfig(st, o.cap), "primary", true)
		if err != nil {
			return res, err
		}
		defer dt.stop()
		breakers = dt.watchBreakers()
		conn, err := dial(dt.addr)
		if err != nil {
			return res, err
		}
		defer conn.Close()
		call = unaryCall(detourv1.NewRouterClient(conn), request("hello, how are you today?"), o.timeout)
		if err := call(ctx); err != nil {
			return res, fmt.Errorf("first call through detour: %w", err)
		}
	}
	before := map[string]fakellm.Stats{}
	for _, f := range st.all() {
		s, err := f.stats()
		if err != nil {
			return res, err
		}
		before[f.name] = s
	}

	var busyAt time.Time
	var wg sync.WaitGroup
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.busyRate > 0 {
		wg.Go(func() {
			select {
			case <-time.After(o.busyAt):
			case <-loadCtx.Done():
				return
			}
			if err := st.primary.control(map[string]any{"busy_rate": o.busyRate}); err != nil {
				fmt.Fprintln(stderr, "busy: /control:", err)
				return
			}
			busyAt = time.Now()
		})
	}
	fmt.Fprintf(stderr, "busy: mode %s: %.0f calls/s for %v...\n", mode, o.rate, o.dur)
	mark := markCPU()
	r := openLoop(ctx, o.rate, o.dur, o.maxInFlight, nil, call)
	cancel()
	wg.Wait()
	res.elapsed = r.Elapsed
	res.foreign = mark.foreignCPU()
	res.sum = summarize(r.Samples, r.Elapsed)
	var up, total uint64
	for _, f := range st.all() {
		s, err := f.stats()
		if err != nil {
			return res, err
		}
		b := before[f.name]
		d := fakellm.Stats{Total: s.Total - b.Total, OK: s.OK - b.OK, Busy: s.Busy - b.Busy, RateLimited: s.RateLimited - b.RateLimited, Canceled: s.Canceled - b.Canceled}
		res.upstream[f.name] = d
		up += d.Total
	}
	total = uint64(res.sum.N - res.sum.Codes[codeGenOverload])
	if total > 0 {
		res.amp = float64(up) / float64(total)
	}
	busyRel := o.busyAt
	if !busyAt.IsZero() {
		busyRel = busyAt.Sub(r.Began)
	}
	res.afterBusy = summarize(window(r.Samples, busyRel, o.dur), 0)
	if breakers != nil && !busyAt.IsZero() {
		for _, e := range breakers() {
			if e.Backend != "primary-a" || e.To != "open" {
				continue
			}
			if e.At.Before(busyAt) {
				res.opensEarly++
				continue
			}
			res.breakerAt = e.At.Sub(busyAt)
			break
		}
		if res.breakerAt >= 0 {
			openRel := busyRel + res.breakerAt
			for _, s := range r.Samples {
				if s.Code != codes.OK && s.End() >= busyRel && s.End() <= openRel {
					res.failedWin++
				}
			}
		}
	}
	return res, nil
}

// clientRecipe is the common client retry recipe against an OpenAI
// endpoint: up to 3 attempts; between them 2^n s plus up to 1 s of jitter
// (n = failed attempts so far, capped at 30 s); a timeout per call; a
// client-side token bucket at the provider's QPS that every attempt waits on.
func clientRecipe(httpAddr string, qps float64, timeout time.Duration) callFunc {
	attempt := directHTTP(httpAddr, "hello, how are you today?", timeout)
	tb := newBucket(qps)
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var err error
		for n := 1; n <= 3; n++ {
			if werr := tb.wait(ctx); werr != nil {
				if err == nil {
					err = status.Error(codes.DeadlineExceeded, "client rate limiter: "+werr.Error())
				}
				return err
			}
			err = attempt(ctx)
			if err == nil || !retryable(err) || n == 3 {
				return err
			}
			backoff := min(time.Duration(1<<n)*time.Second+rand.N(time.Second), 30*time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return err
			}
		}
		return err
	}
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.Unknown, codes.Internal:
		return true
	}
	return false
}

// bucket is a token bucket like golang.org/x/time/rate's Limiter.Wait:
// callers reserve a token in order and sleep until it is theirs; a caller
// whose turn would come after its deadline fails at once.
type bucket struct {
	mu            sync.Mutex
	rate, burst   float64
	tokens        float64
	last          time.Time
	unlimitedRate bool
}

func newBucket(qps float64) *bucket {
	return &bucket{rate: qps, burst: max(1, qps/10), tokens: max(1, qps/10), last: time.Now(), unlimitedRate: qps <= 0}
}

var errBucketDeadline = errors.New("wait would exceed the deadline")

func (b *bucket) wait(ctx context.Context) error {
	if b.unlimitedRate {
		return ctx.Err()
	}
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.burst, b.tokens+b.rate*now.Sub(b.last).Seconds())
	b.last = now
	var d time.Duration
	if b.tokens < 1 {
		d = time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
	}
	if dl, ok := ctx.Deadline(); ok && now.Add(d).After(dl) {
		b.mu.Unlock()
		return errBucketDeadline
	}
	b.tokens--
	b.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func busyConfig(s *busyStack, capQPS float64) string {
	qps := ""
	if capQPS > 0 {
		qps = fmt.Sprintf("\n        qps: %g", capQPS)
	}
	return fmt.Sprintf(`regions:
  - name: primary
    backends:
      - name: primary-a
        endpoint: %s%s
  - name: second
    priority: 1
    backends:
      - name: second-a
        endpoint: %s
fallbacks:
  - name: fallback
    endpoint: %s
`, s.primary.openaiEndpoint(), qps, s.second.openaiEndpoint(), s.fallback.openaiEndpoint())
}
