package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("cachehit", "cache-hit throughput and latency through detour vs a bare grpc-go server answering a constant (closed loop, same run)", cacheHit)
	register("constsrv", "(helper for cachehit) serve detour.v1.Router/Complete answering the CompleteResponse in --response FILE", constSrvMain)
}

// errNotHit is an answer from detour that was not a fresh cache hit.
var errNotHit = status.Error(codes.FailedPrecondition, "cachehit: answer is not SOURCE_CACHE")

// chConfig is one fakellm gRPC backend with every policy on (breaker by
// default, non-binding backend and tenant limits) and the cache on with its
// defaults (5m TTL, 64 MiB local tier, no Redis).
func chConfig(grpcAddr string) string {
	return fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-grpc
        kind: detour
        endpoint: %s
        qps: 1000000
        max_concurrency: 100000
limits:
  tenant_qps: 1000000
`, grpcAddr)
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
func chCall(c detourv1.RouterClient, reqs []*detourv1.CompleteRequest, timeout time.Duration) callFunc {
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

// chResult is one measured run of one target.
type chResult struct {
	sum      summary
	samples  []sample
	srvCPU   time.Duration // the server process under test
	genCPU   time.Duration // this process: the load generator
	hwm      int64
	upstream uint64 // fakellm requests during warm-up + run
}

func cacheHit(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cachehit", flag.ContinueOnError)
	conc := fs.Int("concurrency", 32, "concurrent callers (closed loop)")
	dur := fs.Duration("duration", 10*time.Second, "length of each measured run")
	warm := fs.Duration("warmup", 2*time.Second, "closed-loop warm-up before each measured run")
	rounds := fs.Int("rounds", 2, "rounds; each runs both targets, order alternating (A B, B A, ...)")
	prompts := fs.Int("prompts", 16, "distinct cacheable prompts, cycled")
	maxCalls := fs.Int("max-calls", 5_000_000, "bound on calls per run")
	withMetrics := fs.Bool("detour-metrics", true, "run detour with --metrics on a loopback port, as deployed")
	logCalls := fs.Bool("detour-log-calls", true, "detour's --log-calls (one JSON line per call; on by default in serve)")
	cpuprofile := fs.String("cpuprofile", "", "after the rounds, profile detour (its --pprof) and the constant server under one more closed loop each; detour's CPU profile goes here, the constant server's to FILE.const")
	fs.Func("server-env", "KEY=VALUE added to the environment of both servers, detour and the constant one (repeatable), e.g. GODEBUG=adaptivestackstart=1", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE")
		}
		detourEnv = append(detourEnv, v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prompts < 1 || *rounds < 1 || *conc < 1 {
		return errors.New("--prompts, --rounds and --concurrency must be >= 1")
	}

	fk, err := startFake(fakellm.Config{Name: "cachehit", Region: "local"}, true)
	if err != nil {
		return err
	}
	defer fk.stop()
	cfg := chConfig(fk.grpc)
	dtArgs := []string{fmt.Sprintf("--log-calls=%t", *logCalls)}
	if *cpuprofile != "" {
		if !*withMetrics {
			return errors.New("--cpuprofile needs --detour-metrics: detour serves its profiler on the metrics listener")
		}
		dtArgs = append(dtArgs, "--pprof")
	}
	dt, err := startDetour(cfg, "local", *withMetrics, dtArgs...)
	if err != nil {
		return err
	}
	defer dt.stop()
	dconn, err := dial(dt.addr)
	if err != nil {
		return err
	}
	defer dconn.Close()
	dc := detourv1.NewRouterClient(dconn)

	// Warm the cache: one live call per prompt, then check that each prompt
	// now answers from the cache and keep one hit as the constant.
	reqs := chRequests(*prompts)
	var hit *detourv1.CompleteResponse
	for i, req := range reqs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		first, err := dc.Complete(cctx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("warm prompt %d: %w", i, err)
		}
		if first.GetSource() != detourv1.Source_SOURCE_LIVE {
			return fmt.Errorf("warm prompt %d: first answer is %v, want SOURCE_LIVE", i, first.GetSource())
		}
	}
	for i, req := range reqs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		again, err := dc.Complete(cctx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("prompt %d after warming: %w", i, err)
		}
		if again.GetSource() != detourv1.Source_SOURCE_CACHE || again.GetAttempts() != 0 {
			return fmt.Errorf("prompt %d after warming: source %v attempts %d, want SOURCE_CACHE and 0", i, again.GetSource(), again.GetAttempts())
		}
		if hit == nil {
			hit = again
		}
	}
	hitBytes, err := proto.Marshal(hit)
	if err != nil {
		return err
	}
	dir, err := workDir()
	if err != nil {
		return err
	}
	respFile := filepath.Join(dir, "cachehit-response.pb")
	if err := os.WriteFile(respFile, hitBytes, 0o600); err != nil {
		return err
	}
	cs, csAddr, err := startConstSrv(respFile)
	if err != nil {
		return err
	}
	defer cs.stop()
	cconn, err := dial(csAddr)
	if err != nil {
		return err
	}
	defer cconn.Close()

	type target struct {
		name string
		proc *child
		call callFunc
	}
	// The constant server answers the very bytes of a detour hit, so both
	// targets send and receive the same messages and pass the same check.
	targets := []target{
		{name: "grpc-go constant server", proc: cs, call: chCall(detourv1.NewRouterClient(cconn), reqs, 5*time.Second)},
		{name: "detour, cache hit", proc: dt.child, call: chCall(dc, reqs, 5*time.Second)},
	}
	for _, t := range targets {
		if err := t.call(ctx); err != nil {
			return fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}

	measure := func(t target) (chResult, error) {
		s0, err := fk.stats()
		if err != nil {
			return chResult{}, err
		}
		closedLoop(ctx, *conc, *warm, *maxCalls, t.call)
		p0, g0 := t.proc.proc(), chProc(os.Getpid())
		r := closedLoop(ctx, *conc, *dur, *maxCalls, t.call)
		p1, g1 := t.proc.proc(), chProc(os.Getpid())
		s1, err := fk.stats()
		if err != nil {
			return chResult{}, err
		}
		return chResult{
			sum: summarize(r.Samples, r.Elapsed), samples: r.Samples,
			srvCPU: p1.CPU - p0.CPU, genCPU: g1.CPU - g0.CPU, hwm: p1.HWM,
			upstream: s1.Total - s0.Total,
		}, nil
	}

	mark := markCPU()
	res := make([][]chResult, len(targets))
	if err := alternate(ctx, *rounds, len(targets), func(round, i int) error {
		r, err := measure(targets[i])
		if err != nil {
			return err
		}
		res[i] = append(res[i], r)
		fmt.Fprintf(stderr, "cachehit round %d %-24s %8.0f calls/s p50 %s ms p99 %s ms (%d calls, %s)\n",
			round+1, targets[i].name, r.sum.Throughput, ms(r.sum.P50), ms(r.sum.P99), r.sum.N, r.sum.codesText())
		return nil
	}); err != nil {
		return err
	}
	foreign := mark.foreignCPU()

	if *cpuprofile != "" {
		if err := chProfile(ctx, dt, chCall(dc, reqs, 5*time.Second), respFile, *cpuprofile, reqs, *conc, *dur); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}

	envNote := ""
	if len(detourEnv) > 0 {
		envNote = fmt.Sprintf(" Both servers ran with %s.", strings.Join(detourEnv, " "))
	}
	fmt.Printf("### Cache hit through detour vs a constant gRPC server\n\n%s; load %s; other processes used %.2f cores on average during the rounds.%s "+
		"`detour serve` (metrics %s, call logs %s) with the cache on (defaults: local tier only) in front of fakellm gRPC; %d distinct temperature-0 prompts, each answered once live before the runs, then cycled; "+
		"the constant server is a bare `grpc.NewServer()` returning the bytes of one of detour's hit answers. One client connection per target, closed loop %d callers x %v after %v warm-up, %d rounds alternating the order (A B, B A).\n\n",
		machine(), loadavg(), foreign, envNote, chOnOff(*withMetrics && dt.metrics != ""), chOnOff(*logCalls), *prompts, *conc, *dur, *warm, *rounds)

	var rows [][]string
	tps := make([]float64, len(targets))
	var upstream uint64
	for i, t := range targets {
		var tp, srv, gen []float64
		var pooled []sample
		var hwm int64
		var perRound []string
		for _, r := range res[i] {
			tp = append(tp, r.sum.Throughput)
			n := float64(max(r.sum.N, 1))
			srv = append(srv, float64(r.srvCPU.Microseconds())/n)
			gen = append(gen, float64(r.genCPU.Microseconds())/n)
			pooled = append(pooled, r.samples...)
			hwm = max(hwm, r.hwm)
			perRound = append(perRound, fmt.Sprintf("%.0f", r.sum.Throughput))
			upstream += r.upstream
		}
		tps[i] = median(tp)
		s := summarize(pooled, 0)
		errs := s.codesText()
		if errs == "-" {
			errs = "0"
		}
		rows = append(rows, []string{t.name, fmt.Sprintf("%.0f", tps[i]), strings.Join(perRound, ", "), fmt.Sprintf("%d", s.N),
			ms(s.P50), ms(s.P99), ms(s.P999), errs, fmt.Sprintf("%.1f", median(srv)), fmt.Sprintf("%.1f", median(gen)), mib(hwm)})
	}
	fmt.Println(mdTable([]string{"target", "calls/s (median)", "calls/s per run", "calls", "p50 ms", "p99 ms", "p99.9 ms", "errors", "server CPU µs/call", "load generator CPU µs/call", "server RSS peak MiB"}, rows))
	ratio := tps[1] / tps[0]
	verdict := "pass"
	if ratio < 0.9 {
		verdict = "MISS"
	}
	fmt.Printf("%s\n", mdTable([]string{"check", "measured", "target", "verdict"}, [][]string{
		{"detour cache hit / constant server throughput", fmt.Sprintf("%.2f", ratio), ">= 0.90", verdict},
		{"fakellm requests during warm-ups and runs (every call a local hit)", fmt.Sprintf("%d", upstream), "0", chPassIf(upstream == 0)},
	}))
	if upstream != 0 {
		return fmt.Errorf("fakellm saw %d requests during the runs: not every call was a hit", upstream)
	}
	if ratio < 0.9 {
		return missed("detour cache hit reached %.2f of the constant server's throughput (target 0.90)", ratio)
	}
	return nil
}

func chOnOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func chPassIf(ok bool) string {
	if ok {
		return "pass"
	}
	return "MISS"
}

func chProc(pid int) procSample {
	s, _ := readProc(pid)
	return s
}

// startConstSrv runs this bench binary's constsrv scenario as a child.
func startConstSrv(respFile string, extra ...string) (*child, string, error) {
	return startSelf(append([]string{"constsrv", "--listen", "127.0.0.1:0", "--response", respFile}, extra...),
		"constsrv listening on ", "", detourEnv...)
}

// constSrv answers every Complete with the same response.
type constSrv struct {
	detourv1.UnimplementedRouterServer
	resp *detourv1.CompleteResponse
}

func (s *constSrv) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return s.resp, nil
}

func constSrvMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("constsrv", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	respFile := fs.String("response", "", "file holding a binary-encoded detour.v1.CompleteResponse")
	profile := fs.String("cpuprofile", "", "write a CPU profile here until the server stops")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*respFile)
	if err != nil {
		return err
	}
	resp := &detourv1.CompleteResponse{}
	if err := proto.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("%s: %w", *respFile, err)
	}
	return serveBenchServer(ctx, *listen, *profile, "constsrv listening on ", func(srv *grpc.Server) {
		detourv1.RegisterRouterServer(srv, &constSrv{resp: resp})
	})
}

// chProfile profiles detour (running, with --pprof, its cache warm) under one
// more closed loop through call, then a constsrv under the same load; the
// profiles go to path and path.const.
func chProfile(ctx context.Context, dt *detourProc, call callFunc, respFile, path string, reqs []*detourv1.CompleteRequest, conc int, dur time.Duration) error {
	return profilePair(ctx, "cachehit", dt, call, path, ".const", conc, dur,
		func(profile string) (*child, string, error) { return startConstSrv(respFile, "--cpuprofile", profile) },
		func(c detourv1.RouterClient) callFunc { return chCall(c, reqs, 5*time.Second) })
}
