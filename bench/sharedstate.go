package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
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
	register("sharedstate", "cost per call of the state shared through Redis (fleet qps limiter, cooldowns): open loop through detour without vs with --redis-addr; added p50/p99, Redis ops per call", func() scenario { return &sharedState{} })
}

// ssScriptInner are the commands detour's Lua scripts run inside Redis
// (fleet's GCRA lease and cooldown publish). Redis counts them in
// commandstats like commands a client sends, so they are told apart here:
// with no_cache requests detour sends none of them itself.
var ssScriptInner = map[string]bool{
	"time": true, "get": true, "set": true, // GCRA lease
	"zadd": true, "zremrangebyscore": true, "pttl": true, "pexpire": true, "publish": true, // cooldown publish
}

// ssConfig is one fakellm backend with a qps cap (so the fleet limiter
// books every call) and the default breaker; requests carry no_cache.
func ssConfig(kind, endpoint string, qps float64) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{region("local", 0, regions.Backend{Name: "fake", Kind: kind, Endpoint: endpoint, QPS: qps, MaxConcurrency: 100000})},
		Limits:  regions.LimitPolicy{TenantQPS: 1000000},
	}
}

// sharedState measures what the state shared through Redis costs a call:
// two detours with the same config, (a) without Redis and (b) with it, in
// alternating rounds of the same open loop.
type sharedState struct {
	rate, qps     float64
	dur, warm     time.Duration
	rounds        int
	backend       string
	maxInFlight   int
	timeout       time.Duration
	withMetrics   bool
	logCalls      bool
	control       bool
	fk            *harness.Fake
	rd            *harness.Redis
	local, shared *harness.Detour
	setups        []ssSetup

	// What run recorded.
	res     [][]ssResult // per setup, per round
	foreign float64
}

type ssSetup struct {
	name string
	d    *harness.Detour
	call load.Call
}

// ssResult is one measured run of one setup.
type ssResult struct {
	sum       load.Summary
	samples   []load.Sample
	skipped   int
	detourCPU time.Duration
	redisCPU  time.Duration
	genCPU    time.Duration
	fakeCPU   time.Duration
	upstream  uint64           // fakellm requests during the run
	cmds      map[string]int64 // Redis commands during the run, by name
}

func (s *sharedState) flags(fs *flag.FlagSet) {
	fs.Float64Var(&s.rate, "rate", 5000, "offered calls per second (open loop)")
	fs.DurationVar(&s.dur, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&s.warm, "warmup", 2*time.Second, "open-loop warm-up at the same rate before each measured run")
	fs.IntVar(&s.rounds, "rounds", 4, "rounds; each runs both setups, order alternating (a b, b a, ...)")
	fs.Float64Var(&s.qps, "qps", 0, "the backend's qps cap (fleet-wide with Redis); 0: 2x --rate, so nothing is refused but every call is booked")
	fs.StringVar(&s.backend, "backend", "grpc", "fakellm protocol: grpc (kind detour) or http (kind openai)")
	fs.IntVar(&s.maxInFlight, "max-inflight", 5000, "open loop: calls outstanding at most (beyond: counted as generator overload)")
	fs.DurationVar(&s.timeout, "timeout", 2*time.Second, "deadline of each call")
	fs.BoolVar(&s.withMetrics, "detour-metrics", true, "run detour with --metrics on a loopback port, as deployed")
	fs.BoolVar(&s.logCalls, "detour-log-calls", true, "detour's --log-calls (one JSON line per call; on by default in serve)")
	fs.BoolVar(&s.control, "control", false, "A/A control: start (b) without Redis too, to see the run-to-run noise floor of the difference")
}

func (s *sharedState) setup(ctx context.Context) (func(), error) {
	var st stack
	if s.qps == 0 {
		s.qps = 2 * s.rate
	}
	if s.backend != "grpc" && s.backend != "http" {
		return st.stop, fmt.Errorf("--backend %q: want grpc or http", s.backend)
	}
	if s.rate <= 0 || s.rounds < 1 {
		return st.stop, errors.New("--rate must be > 0 and --rounds >= 1")
	}
	fk, err := harness.StartFake(fakellm.Config{Name: "sharedstate", Region: "local"}, s.backend == "grpc")
	if err != nil {
		return st.stop, err
	}
	st.add(fk.Stop)
	s.fk = fk
	kind, endpoint := regions.KindDetour, fk.GRPC
	if s.backend == "http" {
		kind, endpoint = regions.KindOpenAI, fk.OpenAIEndpoint()
	}
	rd, err := harness.StartRedis()
	if err != nil {
		return st.stop, err
	}
	st.add(rd.Stop)
	s.rd = rd
	doc, err := configYAML(ssConfig(kind, endpoint, s.qps))
	if err != nil {
		return st.stop, err
	}
	logFlag := fmt.Sprintf("--log-calls=%t", s.logCalls)
	// --redis-addr= keeps (a) local even when DETOUR_REDIS_ADDR is set.
	s.local, err = harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: s.withMetrics, Args: []string{logFlag, "--redis-addr="}})
	if err != nil {
		return st.stop, err
	}
	st.add(s.local.Stop)
	bName, bAddr := "(b) --redis-addr", rd.Addr
	if s.control {
		bName, bAddr = "(b) no Redis either (A/A control)", ""
	}
	s.shared, err = harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: s.withMetrics, Args: []string{logFlag, "--redis-addr=" + bAddr}})
	if err != nil {
		return st.stop, err
	}
	st.add(s.shared.Stop)
	// Admin.Status says Redis is up once serve's first health check of it
	// succeeded.
	if !s.control {
		if _, _, err := s.shared.WaitStatus(ctx, 20*time.Millisecond, time.Now().Add(5*time.Second), func(st *detourv1.StatusResponse) bool {
			return st.GetSharedState().GetUp()
		}); err != nil {
			return st.stop, fmt.Errorf("detour with --redis-addr did not report Redis up in Admin.Status within 5s: %w\n%s", err, s.shared.TailText())
		}
	}
	req := load.Request("hello, how are you today?") // no_cache: every call goes upstream
	s.setups = []ssSetup{{name: "(a) no Redis", d: s.local}, {name: bName, d: s.shared}}
	for i := range s.setups {
		conn, err := st.dial(s.setups[i].d.Addr)
		if err != nil {
			return st.stop, err
		}
		s.setups[i].call = load.Unary(detourv1.NewRouterClient(conn), req, s.timeout)
		if err := s.setups[i].call(ctx); err != nil {
			return st.stop, fmt.Errorf("%s: first call: %w", s.setups[i].name, err)
		}
	}
	return st.stop, nil
}

func (s *sharedState) measure(ctx context.Context, su ssSetup) (ssResult, error) {
	load.OpenLoop(ctx, s.rate, s.warm, s.maxInFlight, nil, su.call)
	c0, err := s.rd.CommandStats(ctx)
	if err != nil {
		return ssResult{}, err
	}
	f0, err := s.fk.Stats()
	if err != nil {
		return ssResult{}, err
	}
	d0, r0, g0, fc0 := su.d.Proc(), s.rd.Proc(), harness.Self(), s.fk.Proc()
	r := load.OpenLoop(ctx, s.rate, s.dur, s.maxInFlight, nil, su.call)
	d1, r1, g1, fc1 := su.d.Proc(), s.rd.Proc(), harness.Self(), s.fk.Proc()
	f1, err := s.fk.Stats()
	if err != nil {
		return ssResult{}, err
	}
	c1, err := s.rd.CommandStats(ctx)
	if err != nil {
		return ssResult{}, err
	}
	res := ssResult{sum: load.Summarize(r.Samples, r.Elapsed), samples: r.Samples, skipped: r.Skipped,
		detourCPU: d1.CPU - d0.CPU, redisCPU: r1.CPU - r0.CPU, genCPU: g1.CPU - g0.CPU, fakeCPU: fc1.CPU - fc0.CPU,
		upstream: f1.Total - f0.Total, cmds: map[string]int64{}}
	for k, v := range c1 {
		if d := v - c0[k]; d != 0 {
			res.cmds[k] = d
		}
	}
	return res, nil
}

func (s *sharedState) run(ctx context.Context) error {
	mark := harness.MarkCPU()
	s.res = make([][]ssResult, len(s.setups))
	if err := load.Alternate(ctx, s.rounds, len(s.setups), func(round, i int) error {
		r, err := s.measure(ctx, s.setups[i])
		if err != nil {
			return err
		}
		s.res[i] = append(s.res[i], r)
		fmt.Fprintf(stderr, "sharedstate round %d %-18s %6d calls, %s OK, p50 %s ms p99 %s ms, redis cmds %v\n",
			round+1, s.setups[i].name, r.sum.N, report.Percent(r.sum.SuccessRate()), report.Ms(r.sum.P50), report.Ms(r.sum.P99), r.cmds)
		return nil
	}); err != nil {
		return err
	}
	s.foreign = mark.ForeignCPU()
	return nil
}

// ssAgg is one setup over every round: pooled percentiles, summed counts,
// CPU per call.
type ssAgg struct {
	s                          load.Summary
	calls                      int
	detour, redisC, gen, fakeC float64 // µs per call
	upstream                   uint64
	cmds                       map[string]int64
	total, roundTrips          int64
}

func ssAggregate(rs []ssResult) ssAgg {
	var pooled []load.Sample
	var a ssAgg
	a.cmds = map[string]int64{}
	var dc, rc, gc, fc time.Duration
	for _, r := range rs {
		pooled = append(pooled, r.samples...)
		dc += r.detourCPU
		rc += r.redisCPU
		gc += r.genCPU
		fc += r.fakeCPU
		a.upstream += r.upstream
		for k, v := range r.cmds {
			a.cmds[k] += v
			a.total += v
			if !ssScriptInner[k] {
				a.roundTrips += v
			}
		}
	}
	a.s = load.Summarize(pooled, 0)
	a.calls = a.s.N
	n := float64(max(a.calls, 1))
	a.detour, a.redisC, a.gen, a.fakeC = ssMicros(dc)/n, ssMicros(rc)/n, ssMicros(gc)/n, ssMicros(fc)/n
	return a
}

func (s *sharedState) judge() ([]string, error) {
	return sharedStateJudge(ssAggregate(s.res[0]), ssAggregate(s.res[1]), s.control, s.rate)
}

// sharedStateJudge: a baseline (a) that is not fault-free, or a (b) that
// sent Redis nothing (outside the A/A control), measured nothing; a (b)
// with failed calls missed.
func sharedStateJudge(a, b ssAgg, control bool, rate float64) ([]string, error) {
	var problems []string
	if a.s.OK != a.s.N {
		problems = append(problems, fmt.Sprintf("(a) without Redis was not fault-free at %s calls/s (%s OK: %s): the machine does not carry this rate; lower --rate", harness.Ftoa(rate), report.Percent(a.s.SuccessRate()), a.s.CodesText()))
	}
	if b.roundTrips == 0 && !control {
		problems = append(problems, "(b) sent Redis no command: the fleet limiter was not exercised")
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	if b.s.OK != b.s.N {
		return []string{fmt.Sprintf("(b) with Redis: %s OK (%s)", report.Percent(b.s.SuccessRate()), b.s.CodesText())}, nil
	}
	return nil, nil
}

func (s *sharedState) report(w io.Writer) {
	aggs := []ssAgg{ssAggregate(s.res[0]), ssAggregate(s.res[1])}
	title := "Shared state through detour: cost per call"
	if s.control {
		title += " — A/A CONTROL, (b) has no Redis"
	}
	fmt.Fprintf(w, "### %s\n\n%s; load %s; other processes used %.2f cores on average during the rounds. "+
		"Two `detour serve` processes with the same config: (a) without Redis, (b) with `--redis-addr` to a private redis-server %s on loopback (no persistence). "+
		"One fakellm backend over %s with zero latency, `qps: %s` (fleet-wide in (b): every call is booked through the leased GCRA limiter), default breaker, metrics %s, call logs %s; requests carry `no_cache`, so every call goes upstream and the cache's Redis tier is not involved. "+
		"Open loop %s calls/s x %v after %v warm-up at the same rate, %d rounds alternating the order (a b, b a); percentiles pooled over the rounds; latency counts from each call's scheduled start.\n\n",
		title, report.Machine(), report.LoadAvg(), s.foreign, s.rd.Version(context.Background()), s.backend, harness.Ftoa(s.qps), report.OnOff(s.withMetrics && s.local.Metrics != ""), report.OnOff(s.logCalls), harness.Ftoa(s.rate), s.dur, s.warm, s.rounds)

	var rows [][]string
	for i, su := range s.setups {
		a := aggs[i]
		errs := a.s.CodesText()
		if errs == "-" {
			errs = "0"
		}
		rows = append(rows, []string{su.name, fmt.Sprintf("%d", a.calls), report.Percent(a.s.SuccessRate()), errs,
			report.Ms(a.s.P50), report.Ms(ssPct(s.res[i], 0.90)), report.Ms(a.s.P99), report.Ms(a.s.P999), report.Ms(a.s.Max),
			fmt.Sprintf("%.1f", a.detour), fmt.Sprintf("%.1f", a.redisC),
			fmt.Sprintf("%.4f", float64(a.total)/float64(max(a.calls, 1))), fmt.Sprintf("%.4f", float64(a.roundTrips)/float64(max(a.calls, 1))),
			fmt.Sprintf("%.3f", float64(a.upstream)/float64(max(a.s.OK, 1)))})
	}
	a, b := aggs[0], aggs[1]
	rows = append(rows, []string{"**added by shared state (b − a)**", "", "", "",
		"**" + report.MsSigned(b.s.P50-a.s.P50) + "**", report.MsSigned(ssPct(s.res[1], 0.90) - ssPct(s.res[0], 0.90)), "**" + report.MsSigned(b.s.P99-a.s.P99) + "**", report.MsSigned(b.s.P999 - a.s.P999), "",
		fmt.Sprintf("%+.1f", b.detour-a.detour), fmt.Sprintf("%+.1f", b.redisC-a.redisC), "", "", ""})
	fmt.Fprintln(w, report.Table([]string{"setup", "calls", "OK", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
		"detour CPU µs/call", "redis CPU µs/call", "Redis commands/call (incl. inside scripts)", "Redis round trips/call", "upstream calls/call"}, rows))

	// Which commands (b) cost, per call.
	names := make([]string, 0, len(b.cmds))
	for k := range b.cmds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return b.cmds[names[i]] > b.cmds[names[j]] })
	var cmdRows [][]string
	for _, k := range names {
		where := "sent by detour"
		if ssScriptInner[k] {
			where = "inside a script"
		}
		cmdRows = append(cmdRows, []string{strings.ToUpper(k), where, fmt.Sprintf("%d", b.cmds[k]), fmt.Sprintf("%.4f", float64(b.cmds[k])/float64(max(b.calls, 1)))})
	}
	if len(cmdRows) > 0 {
		fmt.Fprintf(w, "Redis commands during the (b) runs (%d calls; INFO commandstats before and after each run, bench's INFO left out):\n\n%s\n",
			b.calls, report.Table([]string{"command", "", "count", "per call"}, cmdRows))
	}
	if a.total != 0 {
		fmt.Fprintf(w, "During the (a) runs Redis saw %d commands (the idle (b) replica's background work): %v\n\n", a.total, a.cmds)
	}
}

func ssMicros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// ssPct is the q quantile of the latencies pooled over rs, of the calls
// that were sent.
func ssPct(rs []ssResult, q float64) time.Duration {
	var sent []load.Sample
	for _, r := range rs {
		for _, s := range r.samples {
			if s.Code != load.CodeGenOverload {
				sent = append(sent, s)
			}
		}
	}
	return load.PctOf(sent, q)
}
