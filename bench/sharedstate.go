package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("sharedstate", "cost per call of the state shared through Redis (fleet qps limiter, cooldowns): open loop through detour without vs with --redis-addr; added p50/p99, Redis ops per call", sharedState)
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
func ssConfig(kind, endpoint string, qps float64) string {
	return fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake
        kind: %s
        endpoint: %s
        qps: %s
        max_concurrency: 100000
limits:
  tenant_qps: 1000000
`, kind, endpoint, ftoa(qps))
}

// ssRedis is a private redis-server child on a loopback port.
type ssRedis struct {
	*child
	addr string
	rdb  *redis.Client
}

// ssStartRedis starts `redis-server --port P --bind 127.0.0.1 --save ”
// --appendonly no` as a child process, on a free loopback port.
func ssStartRedis() (*ssRedis, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	return ssStartRedisOn(addr)
}

// ssStartRedisOn is ssStartRedis on addr (127.0.0.1:port), e.g. to start
// Redis again where a killed one listened.
func ssStartRedisOn(addr string) (*ssRedis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (Debian: apt-get install redis-server; CI: .ci/services/redis.sh): %w", err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	dir, err := workDir()
	if err != nil {
		return nil, err
	}
	c, err := startChild("redis", bin, []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir},
		func(line string) bool { return strings.Contains(line, "Ready to accept connections") }, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &ssRedis{child: c, addr: addr, rdb: redis.NewClient(&redis.Options{Addr: addr})}, nil
}

func (r *ssRedis) stop() {
	r.rdb.Close()
	r.child.stop()
}

// version is redis_version from INFO server.
func (r *ssRedis) version(ctx context.Context) string {
	s, err := r.rdb.Info(ctx, "server").Result()
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v
		}
	}
	return "?"
}

// commandStats reads calls per command from INFO commandstats, leaving out
// INFO itself (bench's own reads).
func (r *ssRedis) commandStats(ctx context.Context) (map[string]int64, error) {
	s, err := r.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok || name == "info" {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[name] = n
			}
		}
	}
	return out, nil
}

// ssResult is one measured run of one setup.
type ssResult struct {
	sum       summary
	samples   []sample
	skipped   int
	detourCPU time.Duration
	redisCPU  time.Duration
	genCPU    time.Duration
	fakeCPU   time.Duration
	upstream  uint64           // fakellm requests during the run
	cmds      map[string]int64 // Redis commands during the run, by name
}

func sharedState(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sharedstate", flag.ContinueOnError)
	rate := fs.Float64("rate", 5000, "offered calls per second (open loop)")
	dur := fs.Duration("duration", 10*time.Second, "length of each measured run")
	warm := fs.Duration("warmup", 2*time.Second, "open-loop warm-up at the same rate before each measured run")
	rounds := fs.Int("rounds", 4, "rounds; each runs both setups, order alternating (a b, b a, ...)")
	qps := fs.Float64("qps", 0, "the backend's qps cap (fleet-wide with Redis); 0: 2x --rate, so nothing is refused but every call is booked")
	backend := fs.String("backend", "grpc", "fakellm protocol: grpc (kind detour) or http (kind openai)")
	maxInFlight := fs.Int("max-inflight", 5000, "open loop: calls outstanding at most (beyond: counted as generator overload)")
	timeout := fs.Duration("timeout", 2*time.Second, "deadline of each call")
	withMetrics := fs.Bool("detour-metrics", true, "run detour with --metrics on a loopback port, as deployed")
	logCalls := fs.Bool("detour-log-calls", true, "detour's --log-calls (one JSON line per call; on by default in serve)")
	control := fs.Bool("control", false, "A/A control: start (b) without Redis too, to see the run-to-run noise floor of the difference")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *qps == 0 {
		*qps = 2 * *rate
	}
	if *backend != "grpc" && *backend != "http" {
		return fmt.Errorf("--backend %q: want grpc or http", *backend)
	}
	if *rate <= 0 || *rounds < 1 {
		return errors.New("--rate must be > 0 and --rounds >= 1")
	}

	fk, err := startFake(fakellm.Config{Name: "sharedstate", Region: "local"}, *backend == "grpc")
	if err != nil {
		return err
	}
	defer fk.stop()
	kind, endpoint := "detour", fk.grpc
	if *backend == "http" {
		kind, endpoint = "openai", fk.openaiEndpoint()
	}
	rd, err := ssStartRedis()
	if err != nil {
		return err
	}
	defer rd.stop()
	cfg := ssConfig(kind, endpoint, *qps)
	logFlag := fmt.Sprintf("--log-calls=%t", *logCalls)
	// --redis-addr= keeps (a) local even when DETOUR_REDIS_ADDR is set.
	local, err := startDetour(cfg, "local", *withMetrics, logFlag, "--redis-addr=")
	if err != nil {
		return err
	}
	defer local.stop()
	bName, bAddr := "(b) --redis-addr", rd.addr
	if *control {
		bName, bAddr = "(b) no Redis either (A/A control)", ""
	}
	shared, err := startDetour(cfg, "local", *withMetrics, logFlag, "--redis-addr="+bAddr)
	if err != nil {
		return err
	}
	defer shared.stop()
	// serve logs "shared state in redis" once its first health check of
	// Redis succeeded (a warning if it failed): wait for the line in the
	// log file.
	if !*control && !logSays(shared.logPath, "shared state in redis", 5*time.Second) {
		return fmt.Errorf("detour with --redis-addr did not log \"shared state in redis\" within 5s\n%s", shared.tailText())
	}

	type setup struct {
		name string
		d    *detourProc
		call callFunc
	}
	req := request("hello, how are you today?") // no_cache: every call goes upstream
	setups := []setup{{name: "(a) no Redis", d: local}, {name: bName, d: shared}}
	for i := range setups {
		conn, err := dial(setups[i].d.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		setups[i].call = unaryCall(detourv1.NewRouterClient(conn), req, *timeout)
		if err := setups[i].call(ctx); err != nil {
			return fmt.Errorf("%s: first call: %w", setups[i].name, err)
		}
	}

	measure := func(s setup) (ssResult, error) {
		openLoop(ctx, *rate, *warm, *maxInFlight, nil, s.call)
		c0, err := rd.commandStats(ctx)
		if err != nil {
			return ssResult{}, err
		}
		f0, err := fk.stats()
		if err != nil {
			return ssResult{}, err
		}
		d0, r0, g0, fc0 := s.d.proc(), rd.proc(), chProc(os.Getpid()), fk.proc()
		r := openLoop(ctx, *rate, *dur, *maxInFlight, nil, s.call)
		d1, r1, g1, fc1 := s.d.proc(), rd.proc(), chProc(os.Getpid()), fk.proc()
		f1, err := fk.stats()
		if err != nil {
			return ssResult{}, err
		}
		c1, err := rd.commandStats(ctx)
		if err != nil {
			return ssResult{}, err
		}
		res := ssResult{sum: summarize(r.Samples, r.Elapsed), samples: r.Samples, skipped: r.Skipped,
			detourCPU: d1.CPU - d0.CPU, redisCPU: r1.CPU - r0.CPU, genCPU: g1.CPU - g0.CPU, fakeCPU: fc1.CPU - fc0.CPU,
			upstream: f1.Total - f0.Total, cmds: map[string]int64{}}
		for k, v := range c1 {
			if d := v - c0[k]; d != 0 {
				res.cmds[k] = d
			}
		}
		return res, nil
	}

	mark := markCPU()
	res := make([][]ssResult, len(setups))
	if err := alternate(ctx, *rounds, len(setups), func(round, i int) error {
		r, err := measure(setups[i])
		if err != nil {
			return err
		}
		res[i] = append(res[i], r)
		fmt.Fprintf(stderr, "sharedstate round %d %-18s %6d calls, %s OK, p50 %s ms p99 %s ms, redis cmds %v\n",
			round+1, setups[i].name, r.sum.N, pctText(r.sum.successRate()), ms(r.sum.P50), ms(r.sum.P99), r.cmds)
		return nil
	}); err != nil {
		return err
	}
	foreign := mark.foreignCPU()

	// Aggregate: pooled percentiles, summed counts, CPU per call over all
	// runs of a setup.
	type agg struct {
		s                          summary
		calls                      int
		detour, redisC, gen, fakeC float64 // µs per call
		upstream                   uint64
		cmds                       map[string]int64
		total, roundTrips          int64
	}
	aggs := make([]agg, len(setups))
	for i := range setups {
		var pooled []sample
		var a agg
		a.cmds = map[string]int64{}
		var dc, rc, gc, fc time.Duration
		for _, r := range res[i] {
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
		a.s = summarize(pooled, 0)
		a.calls = a.s.N
		n := float64(max(a.calls, 1))
		a.detour, a.redisC, a.gen, a.fakeC = ssMicros(dc)/n, ssMicros(rc)/n, ssMicros(gc)/n, ssMicros(fc)/n
		aggs[i] = a
	}

	title := "Shared state through detour: cost per call"
	if *control {
		title += " — A/A CONTROL, (b) has no Redis"
	}
	fmt.Printf("### %s\n\n%s; load %s; other processes used %.2f cores on average during the rounds. "+
		"Two `detour serve` processes with the same config: (a) without Redis, (b) with `--redis-addr` to a private redis-server %s on loopback (no persistence). "+
		"One fakellm backend over %s with zero latency, `qps: %s` (fleet-wide in (b): every call is booked through the leased GCRA limiter), default breaker, metrics %s, call logs %s; requests carry `no_cache`, so every call goes upstream and the cache's Redis tier is not involved. "+
		"Open loop %s calls/s x %v after %v warm-up at the same rate, %d rounds alternating the order (a b, b a); percentiles pooled over the rounds; latency counts from each call's scheduled start.\n\n",
		title, machine(), loadavg(), foreign, rd.version(ctx), *backend, ftoa(*qps), chOnOff(*withMetrics && local.metrics != ""), chOnOff(*logCalls), ftoa(*rate), *dur, *warm, *rounds)

	var rows [][]string
	for i, s := range setups {
		a := aggs[i]
		errs := a.s.codesText()
		if errs == "-" {
			errs = "0"
		}
		rows = append(rows, []string{s.name, fmt.Sprintf("%d", a.calls), pctText(a.s.successRate()), errs,
			ms(a.s.P50), ms(ssPct(res[i], 0.90)), ms(a.s.P99), ms(a.s.P999), ms(a.s.Max),
			fmt.Sprintf("%.1f", a.detour), fmt.Sprintf("%.1f", a.redisC),
			fmt.Sprintf("%.4f", float64(a.total)/float64(max(a.calls, 1))), fmt.Sprintf("%.4f", float64(a.roundTrips)/float64(max(a.calls, 1))),
			fmt.Sprintf("%.3f", float64(a.upstream)/float64(max(a.s.OK, 1)))})
	}
	a, b := aggs[0], aggs[1]
	rows = append(rows, []string{"**added by shared state (b − a)**", "", "", "",
		"**" + msSigned(b.s.P50-a.s.P50) + "**", msSigned(ssPct(res[1], 0.90) - ssPct(res[0], 0.90)), "**" + msSigned(b.s.P99-a.s.P99) + "**", msSigned(b.s.P999 - a.s.P999), "",
		fmt.Sprintf("%+.1f", b.detour-a.detour), fmt.Sprintf("%+.1f", b.redisC-a.redisC), "", "", ""})
	fmt.Println(mdTable([]string{"setup", "calls", "OK", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
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
		fmt.Printf("Redis commands during the (b) runs (%d calls; INFO commandstats before and after each run, bench's INFO left out):\n\n%s\n",
			b.calls, mdTable([]string{"command", "", "count", "per call"}, cmdRows))
	}
	if a.total != 0 {
		fmt.Printf("During the (a) runs Redis saw %d commands (the idle (b) replica's background work): %v\n\n", a.total, a.cmds)
	}

	// A baseline that is not fault-free, or a limiter never exercised, is
	// a run that measured nothing; a (b) with failed calls missed.
	var problems []string
	if a.s.OK != a.s.N {
		problems = append(problems, fmt.Sprintf("(a) without Redis was not fault-free at %s calls/s (%s OK: %s): the machine does not carry this rate; lower --rate", ftoa(*rate), pctText(a.s.successRate()), a.s.codesText()))
	}
	if b.roundTrips == 0 && !*control {
		problems = append(problems, "(b) sent Redis no command: the fleet limiter was not exercised")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	if b.s.OK != b.s.N {
		return missed("(b) with Redis: %s OK (%s)", pctText(b.s.successRate()), b.s.codesText())
	}
	return nil
}

func ssMicros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// msSigned is ms with a sign.
func msSigned(d time.Duration) string {
	if d < 0 {
		return "−" + ms(-d)
	}
	return "+" + ms(d)
}

// ssPct is the q quantile of the latencies pooled over rs.
func ssPct(rs []ssResult, q float64) time.Duration {
	var lat []time.Duration
	for _, r := range rs {
		for _, s := range r.samples {
			if s.Code != codeGenOverload {
				lat = append(lat, s.Lat)
			}
		}
	}
	slices.Sort(lat)
	return pct(lat, q)
}
