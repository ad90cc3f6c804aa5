package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("hop", "cost of one hop: direct to fakellm gRPC vs a bare grpc-go proxy vs detour (closed and open loop)", func() scenario { return &hop{} })
}

// hop compares three ways to reach fakellm's gRPC API: directly, through a
// bare grpc-go pass-through proxy, and through detour, in rounds of a
// closed and an open loop each.
type hop struct {
	conc                int
	dur, warm           time.Duration
	rate                float64
	rounds, maxCalls    int
	rpc, cpuprofile     string
	withMetrics         bool
	detourFlags         []string // --detour-flag
	proxyEnv, detourEnv []string // --proxy-env, --detour-env
	fk                  *harness.Fake
	dt                  *harness.Detour
	targets             []hopTarget
	closed, opened      [][]hopResult // per target, per round
	foreign             float64
}

// hopTarget is one way to reach fakellm.
type hopTarget struct {
	name string
	addr string
	proc *harness.Child // the hop's process; nil for direct
	call load.Call
}

// hopResult is one measurement of one target.
type hopResult struct {
	sum         load.Summary
	samples     []load.Sample
	elapsed     time.Duration
	hopCPU      time.Duration // CPU of the hop process over the run
	fakeCPU     time.Duration
	hwm, rssEnd int64
}

func (h *hop) flags(fs *flag.FlagSet) {
	fs.IntVar(&h.conc, "concurrency", 32, "closed loop: concurrent callers")
	fs.DurationVar(&h.dur, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&h.warm, "warmup", 2*time.Second, "closed-loop warm-up before each measured run")
	fs.Float64Var(&h.rate, "rate", 3000, "open loop: calls per second")
	fs.IntVar(&h.rounds, "rounds", 3, "rounds; each runs every target once, in turn")
	fs.StringVar(&h.rpc, "rpc", "unary", "unary (Complete) or stream (StreamComplete)")
	fs.IntVar(&h.maxCalls, "max-calls", 5_000_000, "bound on calls per run")
	fs.BoolVar(&h.withMetrics, "detour-metrics", true, "run detour with --metrics on a loopback port, as deployed (the Helm chart always sets it)")
	fs.StringVar(&h.cpuprofile, "cpuprofile", "", "after the rounds, profile detour (its --pprof) and the proxy under one more closed loop each; detour's CPU profile goes here, the proxy's to FILE.proxy")
	fs.Func("detour-flag", "a flag added to detour serve's command line (repeatable), e.g. --gc-heap-floor=0", func(v string) error {
		if !strings.HasPrefix(v, "-") {
			return fmt.Errorf("want a flag such as --name=value")
		}
		h.detourFlags = append(h.detourFlags, v)
		return nil
	})
	fs.Func("proxy-env", "KEY=VALUE added to the grpc-go proxy's environment (repeatable), e.g. GOGC=400", envFlag(&h.proxyEnv))
	fs.Func("detour-env", "KEY=VALUE added to detour's environment (repeatable), e.g. GODEBUG=adaptivestackstart=1", envFlag(&h.detourEnv))
}

// envFlag appends a KEY=VALUE flag value to env.
func envFlag(env *[]string) func(string) error {
	return func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE")
		}
		*env = append(*env, v)
		return nil
	}
}

func (h *hop) setup(ctx context.Context) (func(), error) {
	var st stack
	if h.rpc != "unary" && h.rpc != "stream" {
		return st.stop, fmt.Errorf("--rpc %q: want unary or stream", h.rpc)
	}
	fk, err := harness.StartFake(fakellm.Config{Name: "hop", Region: "local"}, true)
	if err != nil {
		return st.stop, err
	}
	st.add(fk.Stop)
	h.fk = fk
	px, pxAddr, err := startPassthrough(fk.GRPC, h.proxyEnv)
	if err != nil {
		return st.stop, err
	}
	st.add(px.Stop)
	dtArgs := h.detourFlags
	if h.cpuprofile != "" {
		if !h.withMetrics {
			return st.stop, errors.New("--cpuprofile needs --detour-metrics: detour serves its profiler on the metrics listener")
		}
		dtArgs = append(dtArgs, "--pprof")
	}
	doc, err := configYAML(hopConfig(fk.GRPC))
	if err != nil {
		return st.stop, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: h.withMetrics, Args: dtArgs, Env: h.detourEnv})
	if err != nil {
		return st.stop, err
	}
	st.add(dt.Stop)
	h.dt = dt
	h.targets = []hopTarget{
		{name: "direct", addr: fk.GRPC},
		{name: "grpc-go proxy", addr: pxAddr, proc: px},
		{name: "detour", addr: dt.Addr, proc: dt.Child},
	}
	for i, t := range h.targets {
		conn, err := st.dial(t.addr)
		if err != nil {
			return st.stop, err
		}
		h.targets[i].call = h.call(detourv1.NewRouterClient(conn))
		// Every target must answer before anything is measured.
		if err := h.targets[i].call(ctx); err != nil {
			return st.stop, fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}
	return st.stop, nil
}

func (h *hop) call(c detourv1.RouterClient) load.Call {
	if h.rpc == "stream" {
		return load.Stream(c, load.Request("hello, how are you today?"), 5*time.Second)
	}
	return load.Unary(c, load.Request("hello, how are you today?"), 5*time.Second)
}

func (h *hop) measure(ctx context.Context, i int, open bool) hopResult {
	t := h.targets[i]
	if !open {
		load.ClosedLoop(ctx, h.conc, h.warm, h.maxCalls, t.call)
	}
	var p0 harness.ProcSample
	if t.proc != nil {
		p0 = t.proc.Proc()
	}
	f0 := h.fk.Proc()
	var r *load.Run
	if open {
		r = load.OpenLoop(ctx, h.rate, h.dur, 20000, nil, t.call)
	} else {
		r = load.ClosedLoop(ctx, h.conc, h.dur, h.maxCalls, t.call)
	}
	res := hopResult{samples: r.Samples, elapsed: r.Elapsed, sum: load.Summarize(r.Samples, r.Elapsed)}
	res.fakeCPU = h.fk.Proc().CPU - f0.CPU
	if t.proc != nil {
		p1 := t.proc.Proc()
		res.hopCPU, res.hwm, res.rssEnd = p1.CPU-p0.CPU, p1.HWM, p1.RSS
	}
	return res
}

func (h *hop) run(ctx context.Context) error {
	mark := harness.MarkCPU()
	h.closed = make([][]hopResult, len(h.targets))
	h.opened = make([][]hopResult, len(h.targets))
	for round := range h.rounds {
		for i := range h.targets {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h.closed[i] = append(h.closed[i], h.measure(ctx, i, false))
			fmt.Fprintf(stderr, "hop round %d closed %-14s %8.0f calls/s\n", round+1, h.targets[i].name, h.closed[i][round].sum.Throughput)
		}
		for i := range h.targets {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h.opened[i] = append(h.opened[i], h.measure(ctx, i, true))
			fmt.Fprintf(stderr, "hop round %d open   %-14s p99 %s ms\n", round+1, h.targets[i].name, report.Ms(h.opened[i][round].sum.P99))
		}
	}
	if h.cpuprofile != "" {
		if err := h.profile(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	h.foreign = mark.ForeignCPU()
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
	var pooled []load.Sample
	for _, r := range rs {
		tp = append(tp, r.sum.Throughput)
		n := float64(max(r.sum.N, 1))
		hc = append(hc, float64(r.hopCPU.Microseconds())/n)
		fc = append(fc, float64(r.fakeCPU.Microseconds())/n)
		pooled = append(pooled, r.samples...)
		a.hwm = max(a.hwm, r.hwm)
	}
	a.throughput, a.hopCPUPerCall, a.fakeCPUPerCall = load.Median(tp), load.Median(hc), load.Median(fc)
	s := load.Summarize(pooled, 0)
	a.p50, a.p99, a.p999 = s.P50, s.P99, s.P999
	a.errors = s.CodesText()
	if a.errors == "-" {
		a.errors = "0"
	}
	return a
}

// aggs are the closed and the open loop's aggregates, per target.
func (h *hop) aggs() (closed, open []hopAgg) {
	for i := range h.targets {
		closed = append(closed, aggregate(h.closed[i]))
		open = append(open, aggregate(h.opened[i]))
	}
	return closed, open
}

// hopCheck is one target ratio: pass when got <= bound (le) or got >= bound.
type hopCheck struct {
	what       string
	got, bound float64
	le         bool
}

func (c hopCheck) ok() bool {
	if c.le {
		return c.got <= c.bound
	}
	return c.got >= c.bound
}

// hopChecks are the targets of DESIGN.md over the aggregates of direct,
// proxy and detour (in that order), closed and open loop.
func hopChecks(c, o []hopAgg) []hopCheck {
	return []hopCheck{
		{"closed: detour / proxy throughput", c[2].throughput / c[1].throughput, 0.9, false},
		{"closed: detour / proxy p99", float64(c[2].p99) / float64(c[1].p99), 1.2, true},
		{"open: detour / proxy p99", float64(o[2].p99) / float64(o[1].p99), 1.2, true},
		{"closed: detour / direct throughput", c[2].throughput / c[0].throughput, 0.5, false},
	}
}

func (h *hop) judge() ([]string, error) {
	return hopJudge(h.aggs())
}

func hopJudge(c, o []hopAgg) ([]string, error) {
	checks := hopChecks(c, o)
	failed := 0
	for _, ch := range checks {
		if !ch.ok() {
			failed++
		}
	}
	if failed > 0 {
		return []string{fmt.Sprintf("%d of %d hop targets", failed, len(checks))}, nil
	}
	return nil, nil
}

func (h *hop) report(w io.Writer) {
	envNote := " detour --metrics on;"
	if !h.withMetrics {
		envNote = " detour --metrics off;"
	}
	if len(h.detourFlags) > 0 {
		envNote += fmt.Sprintf(" detour flags: %s;", strings.Join(h.detourFlags, " "))
	}
	if len(h.proxyEnv) > 0 {
		envNote += fmt.Sprintf(" proxy env: %s;", strings.Join(h.proxyEnv, " "))
	}
	if len(h.detourEnv) > 0 {
		envNote += fmt.Sprintf(" detour env: %s;", strings.Join(h.detourEnv, " "))
	}
	fmt.Fprintf(w, "### Hop overhead (%s RPC)\n\n%s; load %s; other processes used %.2f cores on average during the rounds;%s fakellm gRPC with zero latency; %d rounds, each target in turn; closed loop %d callers x %v after %v warm-up; open loop %.0f calls/s x %v.\n\n",
		h.rpc, report.Machine(), report.LoadAvg(), h.foreign, envNote, h.rounds, h.conc, h.dur, h.warm, h.rate, h.dur)
	c, o := h.aggs()
	for k, set := range [][]hopAgg{c, o} {
		title := "Closed loop"
		if k == 1 {
			title = "Open loop"
		}
		var rows [][]string
		for i, t := range h.targets {
			a := set[i]
			cpu, rss := "-", "-"
			if t.proc != nil {
				cpu = fmt.Sprintf("%.1f", a.hopCPUPerCall)
				rss = report.MiB(a.hwm)
			}
			rows = append(rows, []string{t.name, fmt.Sprintf("%.0f", a.throughput), report.Ms(a.p50), report.Ms(a.p99), report.Ms(a.p999),
				a.errors, cpu, fmt.Sprintf("%.1f", a.fakeCPUPerCall), rss})
		}
		fmt.Fprintf(w, "%s:\n\n%s\n", title, report.Table([]string{"target", "calls/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "hop CPU µs/call", "fakellm CPU µs/call", "hop RSS peak MiB"}, rows))
	}
	var rows [][]string
	for _, ch := range hopChecks(c, o) {
		op := ">="
		if ch.le {
			op = "<="
		}
		rows = append(rows, []string{ch.what, fmt.Sprintf("%.2f", ch.got), fmt.Sprintf("%s %.2f", op, ch.bound), report.Verdict(ch.ok())})
	}
	fmt.Fprintf(w, "Targets:\n\n%s\n", report.Table([]string{"ratio", "measured", "target", "verdict"}, rows))
}

// hopConfig routes everything to one detour-kind backend with every policy
// on (breaker by default; non-binding backend and tenant limits; a fallback)
// and nothing cached (requests carry no_cache).
func hopConfig(grpcAddr string) *regions.Config {
	return &regions.Config{
		Regions:   []regions.Region{region("local", 0, regions.Backend{Name: "fake-grpc", Kind: regions.KindDetour, Endpoint: grpcAddr, QPS: 1000000, MaxConcurrency: 100000})},
		Fallbacks: []regions.Backend{{Name: "fallback-grpc", Kind: regions.KindDetour, Endpoint: grpcAddr}},
		Limits:    regions.LimitPolicy{TenantQPS: 1000000},
		Cache:     regions.CachePolicy{Disabled: true},
	}
}

// profile profiles detour (running, with --pprof) under one more closed
// loop, then a fresh proxy under the same load; the profiles go to
// --cpuprofile and that path + ".proxy".
func (h *hop) profile(ctx context.Context) error {
	return profilePair(ctx, "hop", h.dt, h.targets[2].call, h.cpuprofile, ".proxy", h.conc, h.dur,
		func(profile string) (*harness.Child, string, error) {
			return startPassthrough(h.fk.GRPC, h.proxyEnv, "--cpuprofile", profile)
		},
		h.call)
}
