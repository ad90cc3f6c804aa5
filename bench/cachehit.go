package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("cachehit", "cache-hit throughput and latency through detour vs a bare grpc-go server answering a constant (closed loop, same run)", func() scenario { return &cacheHit{} })
}

// errNotHit is an answer from detour that was not a fresh cache hit.
var errNotHit = status.Error(codes.FailedPrecondition, "cachehit: answer is not SOURCE_CACHE")

// cacheHit compares detour answering from its cache with a bare grpc-go
// server answering the same bytes, in alternating rounds of a closed loop.
type cacheHit struct {
	conc            int
	dur, warm       time.Duration
	rounds, prompts int
	maxCalls        int
	withMetrics     bool
	logCalls        bool
	cpuprofile      string
	serverEnv       []string // --server-env: both servers
	fk              *harness.Fake
	dt              *harness.Detour
	dc              detourv1.RouterClient
	reqs            []*detourv1.CompleteRequest
	respFile        string
	targets         []chTarget
	res             [][]chResult // per target, per round
	foreign         float64
}

type chTarget struct {
	name string
	proc *harness.Child
	call load.Call
}

// chResult is one measured run of one target.
type chResult struct {
	sum      load.Summary
	samples  []load.Sample
	srvCPU   time.Duration // the server process under test
	genCPU   time.Duration // this process: the load generator
	hwm      int64
	upstream uint64 // fakellm requests during warm-up + run
}

func (c *cacheHit) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.conc, "concurrency", 32, "concurrent callers (closed loop)")
	fs.DurationVar(&c.dur, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&c.warm, "warmup", 2*time.Second, "closed-loop warm-up before each measured run")
	fs.IntVar(&c.rounds, "rounds", 2, "rounds; each runs both targets, order alternating (A B, B A, ...)")
	fs.IntVar(&c.prompts, "prompts", 16, "distinct cacheable prompts, cycled")
	fs.IntVar(&c.maxCalls, "max-calls", 5_000_000, "bound on calls per run")
	fs.BoolVar(&c.withMetrics, "detour-metrics", true, "run detour with --metrics on a loopback port, as deployed")
	fs.BoolVar(&c.logCalls, "detour-log-calls", true, "detour's --log-calls (one JSON line per call; on by default in serve)")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "after the rounds, profile detour (its --pprof) and the constant server under one more closed loop each; detour's CPU profile goes here, the constant server's to FILE.const")
	fs.Func("server-env", "KEY=VALUE added to the environment of both servers, detour and the constant one (repeatable), e.g. GODEBUG=adaptivestackstart=1", envFlag(&c.serverEnv))
}

// chConfig is one fakellm gRPC backend with every policy on (breaker by
// default, non-binding backend and tenant limits) and the cache on with its
// defaults (5m TTL, 64 MiB local tier, no Redis).
func chConfig(grpcAddr string) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{region("local", 0, regions.Backend{Name: "fake-grpc", Kind: regions.KindDetour, Endpoint: grpcAddr, QPS: 1000000, MaxConcurrency: 100000})},
		Limits:  regions.LimitPolicy{TenantQPS: 1000000},
	}
}

// chRequests are n distinct cacheable requests (temperature 0).
func chRequests(n int) []*detourv1.CompleteRequest {
	reqs := make([]*detourv1.CompleteRequest, n)
	for i := range reqs {
		zero := 0.0
		reqs[i] = &detourv1.CompleteRequest{
			Model:       "deepseek-chat",
			Messages:    []*detourv1.Message{{Role: "user", Content: fmt.Sprintf("Classify the sentiment of review #%d: the delivery was late but the product works.", i)}},
			Temperature: &zero,
		}
	}
	return reqs
}

// chCall makes Complete calls cycling over reqs and fails any answer that is
// not a fresh cache hit, so a miss cannot pass for a hit.
func chCall(c detourv1.RouterClient, reqs []*detourv1.CompleteRequest, timeout time.Duration) load.Call {
	var next atomic.Uint64
	return func(ctx context.Context) error {
		req := reqs[next.Add(1)%uint64(len(reqs))]
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		resp, err := c.Complete(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetSource() != detourv1.Source_SOURCE_CACHE {
			return errNotHit
		}
		return nil
	}
}

func (c *cacheHit) setup(ctx context.Context) (func(), error) {
	var st stack
	if c.prompts < 1 || c.rounds < 1 || c.conc < 1 {
		return st.stop, errors.New("--prompts, --rounds and --concurrency must be >= 1")
	}
	fk, err := harness.StartFake(fakellm.Config{Name: "cachehit", Region: "local"}, true)
	if err != nil {
		return st.stop, err
	}
	st.add(fk.Stop)
	c.fk = fk
	dtArgs := []string{fmt.Sprintf("--log-calls=%t", c.logCalls)}
	if c.cpuprofile != "" {
		if !c.withMetrics {
			return st.stop, errors.New("--cpuprofile needs --detour-metrics: detour serves its profiler on the metrics listener")
		}
		dtArgs = append(dtArgs, "--pprof")
	}
	doc, err := configYAML(chConfig(fk.GRPC))
	if err != nil {
		return st.stop, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: c.withMetrics, Args: dtArgs, Env: c.serverEnv})
	if err != nil {
		return st.stop, err
	}
	st.add(dt.Stop)
	c.dt = dt
	dconn, err := st.dial(dt.Addr)
	if err != nil {
		return st.stop, err
	}
	c.dc = detourv1.NewRouterClient(dconn)

	// Warm the cache: one live call per prompt, then check that each prompt
	// now answers from the cache and keep one hit as the constant.
	c.reqs = chRequests(c.prompts)
	var hit *detourv1.CompleteResponse
	for i, req := range c.reqs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		first, err := c.dc.Complete(cctx, req)
		cancel()
		if err != nil {
			return st.stop, fmt.Errorf("warm prompt %d: %w", i, err)
		}
		if first.GetSource() != detourv1.Source_SOURCE_LIVE {
			return st.stop, fmt.Errorf("warm prompt %d: first answer is %v, want SOURCE_LIVE", i, first.GetSource())
		}
	}
	for i, req := range c.reqs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		again, err := c.dc.Complete(cctx, req)
		cancel()
		if err != nil {
			return st.stop, fmt.Errorf("prompt %d after warming: %w", i, err)
		}
		if again.GetSource() != detourv1.Source_SOURCE_CACHE || again.GetAttempts() != 0 {
			return st.stop, fmt.Errorf("prompt %d after warming: source %v attempts %d, want SOURCE_CACHE and 0", i, again.GetSource(), again.GetAttempts())
		}
		if hit == nil {
			hit = again
		}
	}
	hitBytes, err := proto.Marshal(hit)
	if err != nil {
		return st.stop, err
	}
	dir, err := harness.WorkDir()
	if err != nil {
		return st.stop, err
	}
	c.respFile = filepath.Join(dir, "cachehit-response.pb")
	if err := os.WriteFile(c.respFile, hitBytes, 0o600); err != nil {
		return st.stop, err
	}
	cs, csAddr, err := startConstSrv(c.respFile, c.serverEnv)
	if err != nil {
		return st.stop, err
	}
	st.add(cs.Stop)
	cconn, err := st.dial(csAddr)
	if err != nil {
		return st.stop, err
	}
	// The constant server answers the very bytes of a detour hit, so both
	// targets send and receive the same messages and pass the same check.
	c.targets = []chTarget{
		{name: "grpc-go constant server", proc: cs, call: chCall(detourv1.NewRouterClient(cconn), c.reqs, 5*time.Second)},
		{name: "detour, cache hit", proc: dt.Child, call: chCall(c.dc, c.reqs, 5*time.Second)},
	}
	for _, t := range c.targets {
		if err := t.call(ctx); err != nil {
			return st.stop, fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}
	return st.stop, nil
}

func (c *cacheHit) measure(ctx context.Context, t chTarget) (chResult, error) {
	s0, err := c.fk.Stats()
	if err != nil {
		return chResult{}, err
	}
	load.ClosedLoop(ctx, c.conc, c.warm, c.maxCalls, t.call)
	p0, g0 := t.proc.Proc(), harness.Self()
	r := load.ClosedLoop(ctx, c.conc, c.dur, c.maxCalls, t.call)
	p1, g1 := t.proc.Proc(), harness.Self()
	s1, err := c.fk.Stats()
	if err != nil {
		return chResult{}, err
	}
	return chResult{
		sum: load.Summarize(r.Samples, r.Elapsed), samples: r.Samples,
		srvCPU: p1.CPU - p0.CPU, genCPU: g1.CPU - g0.CPU, hwm: p1.HWM,
		upstream: s1.Total - s0.Total,
	}, nil
}

func (c *cacheHit) run(ctx context.Context) error {
	mark := harness.MarkCPU()
	c.res = make([][]chResult, len(c.targets))
	if err := load.Alternate(ctx, c.rounds, len(c.targets), func(round, i int) error {
		r, err := c.measure(ctx, c.targets[i])
		if err != nil {
			return err
		}
		c.res[i] = append(c.res[i], r)
		fmt.Fprintf(stderr, "cachehit round %d %-24s %8.0f calls/s p50 %s ms p99 %s ms (%d calls, %s)\n",
			round+1, c.targets[i].name, r.sum.Throughput, report.Ms(r.sum.P50), report.Ms(r.sum.P99), r.sum.N, r.sum.CodesText())
		return nil
	}); err != nil {
		return err
	}
	c.foreign = mark.ForeignCPU()
	if c.cpuprofile != "" {
		err := profilePair(ctx, "cachehit", c.dt, chCall(c.dc, c.reqs, 5*time.Second), c.cpuprofile, ".const", c.conc, c.dur,
			func(profile string) (*harness.Child, string, error) {
				return startConstSrv(c.respFile, c.serverEnv, "--cpuprofile", profile)
			},
			func(rc detourv1.RouterClient) load.Call { return chCall(rc, c.reqs, 5*time.Second) })
		if err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// throughputs are the median calls/s per target, and the upstream requests
// of every run.
func (c *cacheHit) throughputs() (tps []float64, upstream uint64) {
	for i := range c.targets {
		var tp []float64
		for _, r := range c.res[i] {
			tp = append(tp, r.sum.Throughput)
			upstream += r.upstream
		}
		tps = append(tps, load.Median(tp))
	}
	return tps, upstream
}

func (c *cacheHit) judge() ([]string, error) {
	tps, upstream := c.throughputs()
	return cacheHitJudge(tps[0], tps[1], upstream)
}

// cacheHitJudge: the run measured hits only when fakellm saw no request;
// detour's hits must reach 0.9 of the constant server's throughput.
func cacheHitJudge(constant, detour float64, upstream uint64) ([]string, error) {
	if upstream != 0 {
		return nil, fmt.Errorf("fakellm saw %d requests during the runs: not every call was a hit", upstream)
	}
	if ratio := detour / constant; ratio < 0.9 {
		return []string{fmt.Sprintf("detour cache hit reached %.2f of the constant server's throughput (target 0.90)", ratio)}, nil
	}
	return nil, nil
}

func (c *cacheHit) report(w io.Writer) {
	envNote := ""
	if len(c.serverEnv) > 0 {
		envNote = fmt.Sprintf(" Both servers ran with %s.", strings.Join(c.serverEnv, " "))
	}
	fmt.Fprintf(w, "### Cache hit through detour vs a constant gRPC server\n\n%s; load %s; other processes used %.2f cores on average during the rounds.%s "+
		"`detour serve` (metrics %s, call logs %s) with the cache on (defaults: local tier only) in front of fakellm gRPC; %d distinct temperature-0 prompts, each answered once live before the runs, then cycled; "+
		"the constant server is a bare `grpc.NewServer()` returning the bytes of one of detour's hit answers. One client connection per target, closed loop %d callers x %v after %v warm-up, %d rounds alternating the order (A B, B A).\n\n",
		report.Machine(), report.LoadAvg(), c.foreign, envNote, report.OnOff(c.withMetrics && c.dt.Metrics != ""), report.OnOff(c.logCalls), c.prompts, c.conc, c.dur, c.warm, c.rounds)

	var rows [][]string
	for i, t := range c.targets {
		var tp, srv, gen []float64
		var pooled []load.Sample
		var hwm int64
		var perRound []string
		for _, r := range c.res[i] {
			tp = append(tp, r.sum.Throughput)
			n := float64(max(r.sum.N, 1))
			srv = append(srv, float64(r.srvCPU.Microseconds())/n)
			gen = append(gen, float64(r.genCPU.Microseconds())/n)
			pooled = append(pooled, r.samples...)
			hwm = max(hwm, r.hwm)
			perRound = append(perRound, fmt.Sprintf("%.0f", r.sum.Throughput))
		}
		s := load.Summarize(pooled, 0)
		errs := s.CodesText()
		if errs == "-" {
			errs = "0"
		}
		rows = append(rows, []string{t.name, fmt.Sprintf("%.0f", load.Median(tp)), strings.Join(perRound, ", "), fmt.Sprintf("%d", s.N),
			report.Ms(s.P50), report.Ms(s.P99), report.Ms(s.P999), errs, fmt.Sprintf("%.1f", load.Median(srv)), fmt.Sprintf("%.1f", load.Median(gen)), report.MiB(hwm)})
	}
	fmt.Fprintln(w, report.Table([]string{"target", "calls/s (median)", "calls/s per run", "calls", "p50 ms", "p99 ms", "p99.9 ms", "errors", "server CPU µs/call", "load generator CPU µs/call", "server RSS peak MiB"}, rows))
	tps, upstream := c.throughputs()
	ratio := tps[1] / tps[0]
	fmt.Fprintf(w, "%s\n", report.Table([]string{"check", "measured", "target", "verdict"}, [][]string{
		{"detour cache hit / constant server throughput", fmt.Sprintf("%.2f", ratio), ">= 0.90", report.Verdict(ratio >= 0.9)},
		{"fakellm requests during warm-ups and runs (every call a local hit)", fmt.Sprintf("%d", upstream), "0", report.Verdict(upstream == 0)},
	}))
}
