package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("hop", "cost of one hop: direct to fakellm gRPC vs a bare grpc-go proxy vs detour (closed and open loop)", hop)
}

// hopDetourFlags are the --detour-flag values.
var hopDetourFlags []string

// hopTarget is one way to reach fakellm.
type hopTarget struct {
	name string
	addr string
	proc *child // the hop's process; nil for direct
}

// hopResult is one measurement of one target.
type hopResult struct {
	sum         summary
	samples     []sample
	elapsed     time.Duration
	hopCPU      time.Duration // CPU of the hop process over the run
	fakeCPU     time.Duration
	hwm, rssEnd int64
}

func hop(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hop", flag.ContinueOnError)
	conc := fs.Int("concurrency", 32, "closed loop: concurrent callers")
	dur := fs.Duration("duration", 10*time.Second, "length of each measured run")
	warm := fs.Duration("warmup", 2*time.Second, "closed-loop warm-up before each measured run")
	rate := fs.Float64("rate", 3000, "open loop: calls per second")
	rounds := fs.Int("rounds", 3, "rounds; each runs every target once, in turn")
	rpc := fs.String("rpc", "unary", "unary (Complete) or stream (StreamComplete)")
	maxCalls := fs.Int("max-calls", 5_000_000, "bound on calls per run")
	withMetrics := fs.Bool("detour-metrics", true, "run detour with --metrics on a loopback port, as deployed (the Helm chart always sets it)")
	cpuprofile := fs.String("cpuprofile", "", "after the rounds, profile detour (its --pprof) and the proxy under one more closed loop each; detour's CPU profile goes here, the proxy's to FILE.proxy")
	fs.Func("detour-flag", "a flag added to detour serve's command line (repeatable), e.g. --gc-heap-floor=0", func(v string) error {
		if !strings.HasPrefix(v, "-") {
			return fmt.Errorf("want a flag such as --name=value")
		}
		hopDetourFlags = append(hopDetourFlags, v)
		return nil
	})
	fs.Func("proxy-env", "KEY=VALUE added to the grpc-go proxy's environment (repeatable), e.g. GOGC=400", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE")
		}
		proxyEnv = append(proxyEnv, v)
		return nil
	})
	fs.Func("detour-env", "KEY=VALUE added to detour's environment (repeatable), e.g. GODEBUG=adaptivestackstart=1", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE")
		}
		detourEnv = append(detourEnv, v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rpc != "unary" && *rpc != "stream" {
		return fmt.Errorf("--rpc %q: want unary or stream", *rpc)
	}

	fk, err := startFake(fakellm.Config{Name: "hop", Region: "local"}, true)
	if err != nil {
		return err
	}
	defer fk.stop()
	px, pxAddr, err := startPassthrough(fk.grpc)
	if err != nil {
		return err
	}
	defer px.stop()
	dtArgs := hopDetourFlags
	if *cpuprofile != "" {
		if !*withMetrics {
			return errors.New("--cpuprofile needs --detour-metrics: detour serves its profiler on the metrics listener")
		}
		dtArgs = append(dtArgs, "--pprof")
	}
	dt, err := startDetour(hopConfig(fk.grpc), "local", *withMetrics, dtArgs...)
	if err != nil {
		return err
	}
	defer dt.stop()

	targets := []hopTarget{
		{name: "direct", addr: fk.grpc},
		{name: "grpc-go proxy", addr: pxAddr, proc: px},
		{name: "detour", addr: dt.addr, proc: dt.child},
	}
	clients := make([]callFunc, len(targets))
	for i, t := range targets {
		conn, err := dial(t.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		c := detourv1.NewRouterClient(conn)
		req := request("hello, how are you today?")
		if *rpc == "unary" {
			clients[i] = unaryCall(c, req, 5*time.Second)
		} else {
			clients[i] = streamCall(c, req, 5*time.Second)
		}
		// Every target must answer before anything is measured.
		if err := clients[i](ctx); err != nil {
			return fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}

	measure := func(i int, open bool) hopResult {
		t := targets[i]
		if !open {
			closedLoop(ctx, *conc, *warm, *maxCalls, clients[i])
		}
		var p0 procSample
		if t.proc != nil {
			p0 = t.proc.proc()
		}
		f0 := fk.proc()
		var r *run
		if open {
			r = openLoop(ctx, *rate, *dur, 20000, nil, clients[i])
		} else {
			r = closedLoop(ctx, *conc, *dur, *maxCalls, clients[i])
		}
		res := hopResult{samples: r.Samples, elapsed: r.Elapsed, sum: summarize(r.Samples, r.Elapsed)}
		res.fakeCPU = fk.proc().CPU - f0.CPU
		if t.proc != nil {
			p1 := t.proc.proc()
			res.hopCPU, res.hwm, res.rssEnd = p1.CPU-p0.CPU, p1.HWM, p1.RSS
		}
		return res
	}

	mark := markCPU()
	closed := make([][]hopResult, len(targets))
	opened := make([][]hopResult, len(targets))
	for round := range *rounds {
		for i := range targets {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			closed[i] = append(closed[i], measure(i, false))
			fmt.Fprintf(stderr, "hop round %d closed %-14s %8.0f calls/s\n", round+1, targets[i].name, closed[i][round].sum.Throughput)
		}
		for i := range targets {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			opened[i] = append(opened[i], measure(i, true))
			fmt.Fprintf(stderr, "hop round %d open   %-14s p99 %s ms\n", round+1, targets[i].name, ms(opened[i][round].sum.P99))
		}
	}

	if *cpuprofile != "" {
		if err := hopProfile(ctx, dt, clients[2], fk.grpc, *cpuprofile, *conc, *dur, *rpc); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}

	foreign := mark.foreignCPU()
	envNote := " detour --metrics on;"
	if !*withMetrics {
		envNote = " detour --metrics off;"
	}
	if len(hopDetourFlags) > 0 {
		envNote += fmt.Sprintf(" detour flags: %s;", strings.Join(hopDetourFlags, " "))
	}
	if len(proxyEnv) > 0 {
		envNote += fmt.Sprintf(" proxy env: %s;", strings.Join(proxyEnv, " "))
	}
	if len(detourEnv) > 0 {
		envNote += fmt.Sprintf(" detour env: %s;", strings.Join(detourEnv, " "))
	}
	fmt.Printf("### Hop overhead (%s RPC)\n\n%s; load %s; other processes used %.2f cores on average during the rounds;%s fakellm gRPC with zero latency; %d rounds, each target in turn; closed loop %d callers x %v after %v warm-up; open loop %.0f calls/s x %v.\n\n",
		*rpc, machine(), loadavg(), foreign, envNote, *rounds, *conc, *dur, *warm, *rate, *dur)
	var agg [2][]hopAgg
	for k, set := range [][][]hopResult{closed, opened} {
		title := "Closed loop"
		if k == 1 {
			title = "Open loop"
		}
		var rows [][]string
		for i, t := range targets {
			a := aggregate(set[i])
			agg[k] = append(agg[k], a)
			cpu, rss := "-", "-"
			if t.proc != nil {
				cpu = fmt.Sprintf("%.1f", a.hopCPUPerCall)
				rss = mib(a.hwm)
			}
			rows = append(rows, []string{t.name, fmt.Sprintf("%.0f", a.throughput), ms(a.p50), ms(a.p99), ms(a.p999),
				a.errors, cpu, fmt.Sprintf("%.1f", a.fakeCPUPerCall), rss})
		}
		fmt.Printf("%s:\n\n%s\n", title, mdTable([]string{"target", "calls/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "hop CPU µs/call", "fakellm CPU µs/call", "hop RSS peak MiB"}, rows))
	}
	c, o := agg[0], agg[1]
	type check struct {
		what       string
		got, bound float64
		le         bool // pass when got <= bound (else got >= bound)
	}
	checks := []check{
		{"closed: detour / proxy throughput", c[2].throughput / c[1].throughput, 0.9, false},
		{"closed: detour / proxy p99", float64(c[2].p99) / float64(c[1].p99), 1.2, true},
		{"open: detour / proxy p99", float64(o[2].p99) / float64(o[1].p99), 1.2, true},
		{"closed: detour / direct throughput", c[2].throughput / c[0].throughput, 0.5, false},
	}
	var rows [][]string
	failed := 0
	for _, ch := range checks {
		ok := ch.got >= ch.bound
		op := ">="
		if ch.le {
			ok, op = ch.got <= ch.bound, "<="
		}
		v := "pass"
		if !ok {
			v = "MISS"
			failed++
		}
		rows = append(rows, []string{ch.what, fmt.Sprintf("%.2f", ch.got), fmt.Sprintf("%s %.2f", op, ch.bound), v})
	}
	fmt.Printf("Targets:\n\n%s\n", mdTable([]string{"ratio", "measured", "target", "verdict"}, rows))
	if failed > 0 {
		return missed("%d of %d hop targets", failed, len(checks))
	}
	return nil
}

// hopAgg is the median over rounds of throughput and CPU, and percentiles
// of the pooled samples.
type hopAgg struct {
	throughput                    float64
	p50, p99, p999                time.Duration
	hopCPUPerCall, fakeCPUPerCall float64 // µs
	hwm                           int64
	errors                        string
}

func aggregate(rs []hopResult) hopAgg {
	var a hopAgg
	var tp, hc, fc []float64
	var pooled []sample
	for _, r := range rs {
		tp = append(tp, r.sum.Throughput)
		n := float64(max(r.sum.N, 1))
		hc = append(hc, float64(r.hopCPU.Microseconds())/n)
		fc = append(fc, float64(r.fakeCPU.Microseconds())/n)
		pooled = append(pooled, r.samples...)
		a.hwm = max(a.hwm, r.hwm)
	}
	a.throughput, a.hopCPUPerCall, a.fakeCPUPerCall = median(tp), median(hc), median(fc)
	s := summarize(pooled, 0)
	a.p50, a.p99, a.p999 = s.P50, s.P99, s.P999
	a.errors = s.codesText()
	if a.errors == "-" {
		a.errors = "0"
	}
	return a
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// hopConfig routes everything to one detour-kind backend with every policy
// on (breaker by default; non-binding backend and tenant limits; a fallback)
// and nothing cached (requests carry no_cache).
func hopConfig(grpcAddr string) string {
	return fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-grpc
        kind: detour
        endpoint: %[1]s
        qps: 1000000
        max_concurrency: 100000
fallbacks:
  - name: fallback-grpc
    kind: detour
    endpoint: %[1]s
limits:
  tenant_qps: 1000000
cache:
  disabled: true
`, grpcAddr)
}

// streamCall returns a callFunc making StreamComplete calls and reading
// every chunk.
func streamCall(c detourv1.RouterClient, req *detourv1.CompleteRequest, timeout time.Duration) callFunc {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := c.StreamComplete(ctx, req)
		if err != nil {
			return err
		}
		finished := false
		for {
			ch, err := st.Recv()
			if errors.Is(err, io.EOF) {
				if !finished {
					return errTruncated
				}
				return nil
			}
			if err != nil {
				return err
			}
			if ch.GetFinishReason() != "" {
				finished = true
			}
		}
	}
}

// errTruncated is a stream that ended OK without a finish reason: an answer
// silently cut short.
var errTruncated = errors.New("stream ended OK without finish_reason")

// hopProfile profiles detour (running, with --pprof) under one more closed
// loop through call, then a fresh proxy under the same load; the profiles go
// to path and path.proxy.
func hopProfile(ctx context.Context, dt *detourProc, call callFunc, upstream, path string, conc int, dur time.Duration, rpc string) error {
	return profilePair(ctx, "hop", dt, call, path, ".proxy", conc, dur,
		func(profile string) (*child, string, error) {
			return startPassthrough(upstream, "--cpuprofile", profile)
		},
		func(c detourv1.RouterClient) callFunc {
			if rpc == "stream" {
				return streamCall(c, request("hello, how are you today?"), 5*time.Second)
			}
			return unaryCall(c, request("hello, how are you today?"), 5*time.Second)
		})
}
