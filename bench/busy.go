package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("busy", "busy providers: a sole half-busy backend, a full one, all backends strained (1.2x and 0.7x capacity), a dead one, a busy storm; the client recipe vs detour before and after the capacity work, in one run", func() scenario { return &busy{} })
}

// busyBaseline is the commit detour's capacity work started from: the
// "before" rows are built from it.
const busyBaseline = "96807c1"

// busyBackend is one upstream of a scenario.
type busyBackend struct {
	name, region string
	priority     int
	fallback     bool
	dead         bool // nothing listens at its address
	settings     fakellm.Settings
	// detourQPS is the qps the detour config gives the backend (0: none,
	// so detour must find the limit itself).
	detourQPS float64
}

// busyScenario is one row group of the table.
type busyScenario struct {
	name, what string
	rate       float64
	backends   []busyBackend
	// recipe is the backend the client recipe calls, and recipeQPS its
	// client-side token bucket (0: none).
	recipe    string
	recipeQPS float64
	// turn, when set, is applied to the first backend at turnAt through
	// /control (the busy storm).
	turn   map[string]any
	turnAt time.Duration
	// capacity is what the backends can answer per second in total, for
	// goodput targets (0: not a capacity scenario).
	capacity float64
	judge    func(s *busyScenario, rows map[string]*busyRow) []string
}

// busyRow is one mode's outcome in one scenario.
type busyRow struct {
	mode            string
	sum             load.Summary
	steady          load.Summary  // the calls started in the second half
	upstream        fakellm.Stats // totals over every backend
	upstream2       fakellm.Stats // the second half of the run
	goodput         float64       // answers per second over the second half
	failed          load.Summary  // the calls that failed
	withRetryInfo   int           // failed calls with a RetryInfo
	breakerOpenedIn time.Duration // dead scenario: from the start; <0: never
	deadAttempts    int           // dead scenario: connections to the dead backend
	foreign         float64       // cores other processes used during the run
	elapsed         time.Duration
}

func (r *busyRow) perCall() float64 {
	return float64(r.upstream.Total) / float64(max(r.sum.N, 1))
}

// steadyPerCall is upstream calls per call over the second half of the
// run, once detour has learned the backends' capacity (calls started then,
// and upstream calls made then).
func (r *busyRow) steadyPerCall() float64 {
	return float64(r.upstream2.Total) / float64(max(r.steady.N, 1))
}

// busyShare is upstream busy answers (503 and 429) per upstream call.
func busyShare(s fakellm.Stats) float64 {
	return float64(s.Busy+s.RateLimited) / float64(max(s.Total, 1))
}

type busyOpts struct {
	dur, timeout, latency time.Duration
	maxInFlight           int
	scale                 float64
	oldBin                string
}

// busy runs each busy-provider scenario in each mode (the client recipe,
// detour before the capacity work, this detour) on fresh processes, and
// holds this detour to each scenario's targets.
type busy struct {
	o         busyOpts
	only      string
	modesFlag string
	modes     []string
	scs       []*busyScenario

	// What run recorded: per scenario, per mode.
	rows []map[string]*busyRow
}

func (b *busy) flags(fs *flag.FlagSet) {
	o := &b.o
	fs.DurationVar(&o.dur, "duration", 30*time.Second, "how long load is offered in each scenario and mode")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "client deadline per call (every mode)")
	fs.DurationVar(&o.latency, "latency", 100*time.Millisecond, "backends' answer latency (jitter a quarter of it)")
	fs.Float64Var(&o.scale, "scale", 1, "multiply every rate and cap by this (keep the ratios; lower it on a slow machine)")
	fs.IntVar(&o.maxInFlight, "max-inflight", 50000, "bound on outstanding client calls")
	fs.StringVar(&b.only, "scenarios", "", "comma-separated scenarios to run (default: all): "+strings.Join(busyNames(), ","))
	fs.StringVar(&b.modesFlag, "modes", "recipe,before,after", "modes: recipe (the client recipe, direct), before (detour at "+busyBaseline+"), after (this detour), persist (this detour with retry.max_attempts 5 and retry.budget_ratio 1)")
	fs.StringVar(&o.oldBin, "before-bin", "", "a detour binary to run as \"before\" (default: built from commit "+busyBaseline+")")
}

func (b *busy) setup(context.Context) (func(), error) {
	o := &b.o
	b.modes = strings.Split(b.modesFlag, ",")
	for _, m := range b.modes {
		if m != "recipe" && m != "before" && m != "after" && m != "persist" {
			return nil, fmt.Errorf("--modes: unknown mode %q", m)
		}
	}
	if slices.Contains(b.modes, "before") && o.oldBin == "" {
		bin, err := buildBaseline(busyBaseline)
		if err != nil {
			return nil, fmt.Errorf("building detour at %s for the before rows (use --modes recipe,after to skip them): %w", busyBaseline, err)
		}
		o.oldBin = bin
	}
	for _, s := range busyScenarios(*o) {
		if b.only == "" || slices.Contains(strings.Split(b.only, ","), s.name) {
			b.scs = append(b.scs, s)
		}
	}
	if len(b.scs) == 0 {
		return nil, fmt.Errorf("--scenarios: none of %q; have %s", b.only, strings.Join(busyNames(), ","))
	}
	return nil, nil
}

func (b *busy) run(ctx context.Context) error {
	for _, s := range b.scs {
		rows := map[string]*busyRow{}
		for _, m := range b.modes {
			if err := ctx.Err(); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "busy: %s, %s: %.0f calls/s for %v...\n", s.name, m, s.rate, b.o.dur)
			r, err := busyRun(ctx, s, m, b.o)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", s.name, m, err)
			}
			rows[m] = r
		}
		b.rows = append(b.rows, rows)
	}
	return nil
}

// misses are the targets each scenario missed ("after" rows only), per
// scenario; nil for a scenario that has no judge or no "after" row.
func (b *busy) misses() [][]string {
	out := make([][]string, len(b.scs))
	for i, s := range b.scs {
		if s.judge != nil && b.rows[i]["after"] != nil {
			out[i] = s.judge(s, b.rows[i])
		}
	}
	return out
}

func (b *busy) judge() ([]string, error) {
	var misses []string
	for i, miss := range b.misses() {
		if len(miss) > 0 {
			misses = append(misses, b.scs[i].name+": "+strings.Join(miss, "; "))
		}
	}
	if len(misses) > 0 {
		return []string{strings.Join(misses, " | ")}, nil
	}
	return nil, nil
}

func (b *busy) report(w io.Writer) {
	o := b.o
	fmt.Fprintf(w, "### Busy providers\n\n%s; load %s. Each scenario offers its rate (open loop) for %v per mode; backends answer in %v ± %v; client deadline %v. "+
		"recipe: the client recipe straight to one backend (HTTP, up to 3 attempts, 2^n s + U(0,1 s) backoff, a client token bucket at the backend's known qps when it has one). "+
		"before: one gRPC call per client call to detour at %s (its defaults). after: the same to this detour (its defaults). persist: this detour with retry.max_attempts 5 and retry.budget_ratio 1. "+
		"Upstream counts are fakellm's own (/stats); busy/upstream counts 503 and 429 answers; goodput and the steady busy share are over the second half of the run.\n\n",
		report.Machine(), report.LoadAvg(), o.dur, o.latency, o.latency/4, o.timeout, busyBaseline)
	misses := b.misses()
	for i, s := range b.scs {
		printBusy(w, s, b.modes, b.rows[i])
		if s.judge != nil && b.rows[i]["after"] != nil {
			verdict := "pass"
			if len(misses[i]) > 0 {
				verdict = "MISS: " + strings.Join(misses[i], "; ")
			}
			fmt.Fprintf(w, "Targets (%s): %s\n\n", s.name, verdict)
		}
	}
}

func busyNames() []string {
	var out []string
	for _, s := range busyScenarios(busyOpts{scale: 1, latency: 100 * time.Millisecond}) {
		out = append(out, s.name)
	}
	return out
}

// busyScenarios are the scenarios of issue 11, with rates scaled by
// o.scale. Capacities are in answers per second.
func busyScenarios(o busyOpts) []*busyScenario {
	k := o.scale
	lat := fakellm.Settings{Latency: o.latency, Jitter: o.latency / 4}
	with := func(f func(s *fakellm.Settings)) fakellm.Settings {
		s := lat
		f(&s)
		return s
	}
	// Concurrency cap of the full backend: its capacity is slots/latency.
	slots := max(4, int(200*k*o.latency.Seconds()))
	return []*busyScenario{
		{
			name: "sole-random", what: "one backend answers 50% of calls 503 at random, below any cap; no fallback",
			rate:     500 * k,
			backends: []busyBackend{{name: "sole", region: "home", settings: with(func(s *fakellm.Settings) { s.BusyRate = 0.5 })}},
			recipe:   "sole",
			judge:    judgeSoleRandom,
		},
		{
			name: "sole-full", what: fmt.Sprintf("one backend answers 503 beyond %d calls in flight (%.0f answers/s); 2x that offered; no fallback", slots, float64(slots)/o.latency.Seconds()),
			rate:     2 * float64(slots) / o.latency.Seconds(),
			backends: []busyBackend{{name: "sole", region: "home", settings: with(func(s *fakellm.Settings) { s.MaxConcurrency = slots })}},
			recipe:   "sole",
			capacity: float64(slots) / o.latency.Seconds(),
			judge:    judgeFull,
		},
		{
			name: "strained-1.2x", what: "primary 50% busy under a 400/s cap, second region 20% busy under 200/s, fallback under 120/s (429 above the caps); 400/s offered, 480 answers/s possible; detour is told no cap",
			rate: 400 * k,
			backends: []busyBackend{
				{name: "primary", region: "home", settings: with(func(s *fakellm.Settings) { s.BusyRate = 0.5; s.QPS = 400 * k })},
				{name: "second", region: "away", priority: 1, settings: with(func(s *fakellm.Settings) { s.BusyRate = 0.2; s.QPS = 200 * k })},
				{name: "fallback", region: "fallback", fallback: true, settings: with(func(s *fakellm.Settings) { s.QPS = 120 * k })},
			},
			recipe: "primary", recipeQPS: 400 * k,
			capacity: 480 * k,
			judge:    judgeStrained12,
		},
		{
			name: "strained-0.7x", what: "the same backends under smaller caps (240/s, 125/s, 60/s): 280 answers/s possible for 400/s offered",
			rate: 400 * k,
			backends: []busyBackend{
				{name: "primary", region: "home", settings: with(func(s *fakellm.Settings) { s.BusyRate = 0.5; s.QPS = 240 * k })},
				{name: "second", region: "away", priority: 1, settings: with(func(s *fakellm.Settings) { s.BusyRate = 0.2; s.QPS = 125 * k })},
				{name: "fallback", region: "fallback", fallback: true, settings: with(func(s *fakellm.Settings) { s.QPS = 60 * k })},
			},
			recipe: "primary", recipeQPS: 240 * k,
			capacity: 280 * k,
			judge:    judgeOver,
		},
		{
			name: "dead", what: "the own region has a dead backend (every connection reset) beside a healthy one; a healthy second region",
			rate: 400 * k,
			backends: []busyBackend{
				{name: "dead", region: "home", dead: true},
				{name: "alive", region: "home", settings: lat},
				{name: "second", region: "away", priority: 1, settings: lat},
			},
			recipe: "alive",
			judge:  judgeDead,
		},
		{
			name: "storm", what: "the seed scenario: the primary (qps 1000 in detour's config) turns 50% busy at t=5s, a healthy second region at +40 ms; 2000/s offered",
			rate: 2000 * k,
			backends: []busyBackend{
				{name: "primary", region: "home", settings: with(func(s *fakellm.Settings) { s.QPS = 1000 * k }), detourQPS: 1000 * k},
				{name: "second", region: "away", priority: 1, settings: with(func(s *fakellm.Settings) { s.Latency += 40 * time.Millisecond })},
				{name: "fallback", region: "fallback", fallback: true, settings: with(func(s *fakellm.Settings) { s.Latency += 80 * time.Millisecond })},
			},
			recipe: "primary", recipeQPS: 1000 * k,
			turn: map[string]any{"busy_rate": 0.5}, turnAt: 5 * time.Second,
			judge: judgeStorm,
		},
	}
}

// busyRun runs one mode of one scenario on fresh processes.
func busyRun(ctx context.Context, s *busyScenario, mode string, o busyOpts) (*busyRow, error) {
	row := &busyRow{mode: mode, breakerOpenedIn: -1}
	fakes := map[string]*harness.Fake{}
	endpoints := map[string]string{}
	defer func() {
		for _, f := range fakes {
			f.Stop()
		}
	}()
	var dead *deadBackend
	for _, b := range s.backends {
		if b.dead {
			d, err := startDead()
			if err != nil {
				return nil, err
			}
			defer d.close()
			dead = d
			endpoints[b.name] = "http://" + d.addr + "/v1"
			continue
		}
		f, err := harness.StartFake(fakellm.Config{Name: b.name, Region: b.region, Settings: b.settings}, false)
		if err != nil {
			return nil, err
		}
		fakes[b.name] = f
		endpoints[b.name] = f.OpenAIEndpoint()
	}
	var call load.Call
	var det *harness.Detour
	switch mode {
	case "recipe":
		call = clientRecipe(fakes[s.recipe].HTTP, s.recipeQPS, o.timeout)
	default:
		doc, err := busyConfig(s, endpoints, mode == "persist")
		if err != nil {
			return nil, err
		}
		bin := ""
		if mode == "before" {
			bin = o.oldBin
		}
		det, err = harness.StartDetour(harness.DetourOptions{Bin: bin, Config: doc, Region: "home"})
		if err != nil {
			return nil, err
		}
		defer det.Stop()
		conn, err := load.Dial(det.Addr)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		call = load.Unary(detourv1.NewRouterClient(conn), load.Request("hello, how are you today?"), o.timeout)
	}
	before := map[string]fakellm.Stats{}
	for n, f := range fakes {
		st, err := f.Stats()
		if err != nil {
			return nil, err
		}
		before[n] = st
	}
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	defer bg.Wait()
	if s.turn != nil {
		first := fakes[s.backends[0].name]
		bg.Go(func() {
			select {
			case <-time.After(s.turnAt):
				if err := first.Control(s.turn); err != nil {
					fmt.Fprintln(stderr, "busy: /control:", err)
				}
			case <-loadCtx.Done():
			}
		})
	}
	// Halfway, note the backends' counts for the steady state.
	mid := map[string]fakellm.Stats{}
	var midMu sync.Mutex
	bg.Go(func() {
		select {
		case <-time.After(o.dur / 2):
		case <-loadCtx.Done():
			return
		}
		midMu.Lock()
		defer midMu.Unlock()
		for n, f := range fakes {
			if st, err := f.Stats(); err == nil {
				mid[n] = st
			}
		}
	})
	if det != nil && slices.ContainsFunc(s.backends, func(b busyBackend) bool { return b.dead }) {
		start := time.Now()
		bg.Go(func() { row.breakerOpenedIn = watchOpen(loadCtx, det.Addr, "dead", start) })
	}
	var mu sync.Mutex
	errsWithInfo := 0
	wrapped := func(ctx context.Context) error {
		err := call(ctx)
		if err != nil && hasRetryInfo(err) {
			mu.Lock()
			errsWithInfo++
			mu.Unlock()
		}
		return err
	}
	mark := harness.MarkCPU()
	r := load.OpenLoop(ctx, s.rate, o.dur, o.maxInFlight, nil, wrapped)
	row.foreign = mark.ForeignCPU()
	cancel()
	bg.Wait()
	row.elapsed = r.Elapsed
	row.sum = load.Summarize(r.Samples, r.Elapsed)
	row.steady = load.Summarize(load.Window(r.Samples, o.dur/2, o.dur), o.dur/2)
	var failed []load.Sample
	okSecondHalf := 0
	for _, x := range r.Samples {
		if x.Code != codes.OK && x.Code != load.CodeGenOverload {
			failed = append(failed, x)
		}
		if x.Code == codes.OK && x.End() >= o.dur/2 && x.End() < o.dur {
			okSecondHalf++
		}
	}
	row.failed = load.Summarize(failed, 0)
	if dead != nil {
		row.deadAttempts = int(dead.n.Load())
	}
	row.withRetryInfo = errsWithInfo
	row.goodput = float64(okSecondHalf) / (o.dur / 2).Seconds()
	for n, f := range fakes {
		st, err := f.Stats()
		if err != nil {
			return nil, err
		}
		b := before[n]
		row.upstream = addStats(row.upstream, subStats(st, b))
		if m, ok := mid[n]; ok {
			row.upstream2 = addStats(row.upstream2, subStats(st, m))
		}
	}
	return row, nil
}

// deadBackend accepts connections and resets them at once, counting them:
// a backend that is down, whose attempts can be counted.
type deadBackend struct {
	addr string
	l    net.Listener
	n    atomic.Int64
	done chan struct{}
}

func startDead() (*deadBackend, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &deadBackend{addr: l.Addr().String(), l: l, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d.n.Add(1)
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // RST: connection reset by peer
			}
			c.Close()
		}
	}()
	return d, nil
}

func (d *deadBackend) close() {
	d.l.Close()
	<-d.done
}

func subStats(a, b fakellm.Stats) fakellm.Stats {
	return fakellm.Stats{Total: a.Total - b.Total, OK: a.OK - b.OK, Busy: a.Busy - b.Busy, RateLimited: a.RateLimited - b.RateLimited, Canceled: a.Canceled - b.Canceled}
}

func addStats(a, b fakellm.Stats) fakellm.Stats {
	return fakellm.Stats{Total: a.Total + b.Total, OK: a.OK + b.OK, Busy: a.Busy + b.Busy, RateLimited: a.RateLimited + b.RateLimited, Canceled: a.Canceled + b.Canceled}
}

func hasRetryInfo(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// watchOpen polls detour's Admin status until backend's breaker is open,
// and returns how long after start that was; -1 if it never was.
func watchOpen(ctx context.Context, addr, backend string, start time.Time) time.Duration {
	conn, err := load.Dial(addr)
	if err != nil {
		return -1
	}
	defer conn.Close()
	c := detourv1.NewAdminClient(conn)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return -1
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(cctx, &detourv1.StatusRequest{})
		cancel()
		if err != nil {
			continue
		}
		for _, b := range st.GetBackends() {
			if b.GetName() == backend && b.GetBreakerState() == "open" {
				return time.Since(start)
			}
		}
	}
}

// busyConfig is the detour config of a scenario, built from the schema's
// own types: every backend in its region, fallbacks last; only what both
// the before and the after binaries understand.
//
// persist sets retry.max_attempts 5 and retry.budget_ratio 1: as many
// attempts as the gateways' fallback chains make, at most 2 upstream calls
// per call.
func busyConfig(s *busyScenario, endpoints map[string]string, persist bool) (string, error) {
	var cfg regions.Config
	if persist {
		cfg.Retry = regions.RetryPolicy{MaxAttempts: 5, BudgetRatio: 1}
	}
	for _, b := range s.backends {
		be := regions.Backend{Name: b.name, Endpoint: endpoints[b.name], QPS: b.detourQPS}
		if b.fallback {
			cfg.Fallbacks = append(cfg.Fallbacks, be)
			continue
		}
		i := slices.IndexFunc(cfg.Regions, func(r regions.Region) bool { return r.Name == b.region })
		if i < 0 {
			cfg.Regions = append(cfg.Regions, regions.Region{Name: b.region, Priority: b.priority})
			i = len(cfg.Regions) - 1
		}
		cfg.Regions[i].Backends = append(cfg.Regions[i].Backends, be)
	}
	return configYAML(&cfg)
}

// buildBaseline builds cmd/detour at rev into a temp dir, from a git
// worktree of this repository.
func buildBaseline(rev string) (string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := harness.WorkDir()
	if err != nil {
		return "", err
	}
	src := filepath.Join(dir, "detour-"+rev)
	if out, err := exec.Command("git", "-C", root, "worktree", "add", "--detach", src, rev).CombinedOutput(); err != nil {
		return "", fmt.Errorf("git worktree add %s: %w\n%s", rev, err, out)
	}
	defer exec.Command("git", "-C", root, "worktree", "remove", "--force", src).Run()
	bin := filepath.Join(dir, "detour-"+rev+"-bin")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/detour")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build at %s: %w\n%s", rev, err, out)
	}
	return bin, nil
}

func printBusy(w io.Writer, s *busyScenario, modes []string, rows map[string]*busyRow) {
	fmt.Fprintf(w, "#### %s\n\n%s; %.0f calls/s offered.\n\n", s.name, s.what, s.rate)
	var tab [][]string
	for _, m := range modes {
		r := rows[m]
		if r == nil {
			continue
		}
		fail := "-"
		if r.failed.N > 0 {
			fail = fmt.Sprintf("%d, p50 %s ms, %d%% RetryInfo", r.failed.N, report.Ms(r.failed.P50), 100*r.withRetryInfo/r.failed.N)
		}
		opened := "-"
		if slices.ContainsFunc(s.backends, func(b busyBackend) bool { return b.dead }) && m != "recipe" {
			opened = "never"
			if r.breakerOpenedIn >= 0 {
				opened = report.Ms(r.breakerOpenedIn) + " ms"
			}
			opened += fmt.Sprintf(", %d attempts on it", r.deadAttempts)
		}
		tab = append(tab, []string{m, fmt.Sprint(r.sum.N), report.Percent(r.sum.SuccessRate()), report.Percent(r.steady.SuccessRate()), fmt.Sprintf("%.2f", r.perCall()),
			fmt.Sprintf("%.2f", float64(r.upstream.Total)/float64(max(r.sum.OK, 1))),
			report.Ms(r.sum.P50), report.Ms(r.sum.P99), report.Percent(busyShare(r.upstream)), report.Percent(busyShare(r.upstream2)),
			fmt.Sprintf("%.0f", r.goodput), fail, opened, r.sum.CodesText(), fmt.Sprintf("%.2f", r.foreign)})
	}
	fmt.Fprintln(w, report.Table([]string{"mode", "calls", "success", "success, 2nd half", "upstream/call", "upstream/answer", "p50 ms", "p99 ms", "busy/upstream", "busy/upstream, 2nd half",
		"goodput/s, 2nd half", "failed calls", "dead breaker open", "errors", "other processes, cores"}, tab))
}

func judgeSoleRandom(s *busyScenario, rows map[string]*busyRow) []string {
	a, rec := rows["after"], rows["recipe"]
	var miss []string
	if rec != nil {
		// Both answer each attempt at random: the same success within
		// sampling error (three standard errors of the difference).
		if a.sum.SuccessRate() < rec.sum.SuccessRate()-sameWithin(rec.sum, a.sum) {
			miss = append(miss, fmt.Sprintf("success %s below the recipe's %s", report.Percent(a.sum.SuccessRate()), report.Percent(rec.sum.SuccessRate())))
		}
		if a.perCall() > rec.perCall()*1.02 {
			miss = append(miss, fmt.Sprintf("%.2f upstream calls per call, more than the recipe's %.2f", a.perCall(), rec.perCall()))
		}
	}
	if a.sum.P99 >= time.Second {
		miss = append(miss, fmt.Sprintf("p99 %s ms >= 1 s", report.Ms(a.sum.P99)))
	}
	return miss
}

func judgeFull(s *busyScenario, rows map[string]*busyRow) []string {
	a := rows["after"]
	var miss []string
	if b := busyShare(a.upstream2); b > 0.05 {
		miss = append(miss, fmt.Sprintf("steady busy share %s > 5%%", report.Percent(b)))
	}
	if a.goodput < 0.9*s.capacity {
		miss = append(miss, fmt.Sprintf("goodput %.0f/s < 90%% of the %.0f/s the backend can serve", a.goodput, s.capacity))
	}
	return miss
}

// judgeStrained12 holds the targets over the second half of the run, once
// detour has learned the backends' capacity (the first seconds, while the
// limits adapt, are in the whole-run columns): success and upstream calls
// per call, and both against the recipe's over the same half. Over the
// whole run the success must still be the recipe's at least.
func judgeStrained12(s *busyScenario, rows map[string]*busyRow) []string {
	a, rec := rows["after"], rows["recipe"]
	var miss []string
	if a.steady.SuccessRate() < 0.99 {
		miss = append(miss, fmt.Sprintf("success over the second half %s < 99%%", report.Percent(a.steady.SuccessRate())))
	}
	if a.steadyPerCall() > 1.8 {
		miss = append(miss, fmt.Sprintf("%.2f upstream calls per call over the second half > 1.8", a.steadyPerCall()))
	}
	if rec == nil {
		return miss
	}
	if a.sum.SuccessRate() < rec.sum.SuccessRate() {
		miss = append(miss, fmt.Sprintf("success %s below the recipe's %s", report.Percent(a.sum.SuccessRate()), report.Percent(rec.sum.SuccessRate())))
	}
	if a.steadyPerCall() > rec.steadyPerCall()*1.02 {
		miss = append(miss, fmt.Sprintf("%.2f upstream calls per call over the second half, more than the recipe's %.2f", a.steadyPerCall(), rec.steadyPerCall()))
	}
	return miss
}

// sameWithin is how far below b's success rate a's may be and still count
// as the same: three standard errors of the difference of two sampled
// rates, at least half a point.
func sameWithin(b, a load.Summary) float64 {
	p := b.SuccessRate()
	se := math.Sqrt(p * (1 - p) * (1/float64(max(a.N, 1)) + 1/float64(max(b.N, 1))))
	return max(0.005, 3*se)
}

// judgeOver holds an over-capacity scenario to its targets: goodput at 90%
// of what the backends can answer, the rest refused fast with RetryInfo,
// and at least the recipe's goodput. (Upstream calls per answer are in the
// table: detour, told no caps, spends some on 429s that a client who knows
// its provider's cap avoids.)
// (Success rates are not compared: the recipe's calls wait in its token
// bucket and backoffs for up to the deadline, so in a run of fixed length
// it is still answering after the load stopped, on capacity it borrows
// from the next period; in steady state it gets what its goodput says.)
func judgeOver(s *busyScenario, rows map[string]*busyRow) []string {
	a := rows["after"]
	var miss []string
	if a.goodput < 0.9*s.capacity {
		miss = append(miss, fmt.Sprintf("goodput %.0f/s < 90%% of capacity %.0f/s", a.goodput, s.capacity))
	}
	if rec := rows["recipe"]; rec != nil && a.goodput < rec.goodput {
		miss = append(miss, fmt.Sprintf("goodput %.0f/s below the recipe's %.0f/s", a.goodput, rec.goodput))
	}
	if a.failed.N > 0 {
		if share := float64(a.withRetryInfo) / float64(a.failed.N); share < 0.99 {
			miss = append(miss, fmt.Sprintf("only %.0f%% of refused calls carry RetryInfo", 100*share))
		}
		if a.failed.P50 > 1500*time.Millisecond {
			miss = append(miss, fmt.Sprintf("refused calls wait %s ms (p50): not refused fast", report.Ms(a.failed.P50)))
		}
	}
	return miss
}

func judgeDead(s *busyScenario, rows map[string]*busyRow) []string {
	a := rows["after"]
	var miss []string
	if a.breakerOpenedIn < 0 || a.breakerOpenedIn > time.Second {
		miss = append(miss, fmt.Sprintf("dead backend's breaker opened after %v, want within 1 s", a.breakerOpenedIn))
	}
	if a.sum.SuccessRate() < 0.999 {
		miss = append(miss, fmt.Sprintf("success %s", report.Percent(a.sum.SuccessRate())))
	}
	// Every attempt on the dead backend is an extra upstream call.
	if extra := float64(a.deadAttempts) / float64(max(a.sum.N, 1)); extra > 0.01 {
		miss = append(miss, fmt.Sprintf("%.1f%% extra upstream calls (to the dead backend) > 1%%", 100*extra))
	}
	return miss
}

func judgeStorm(s *busyScenario, rows map[string]*busyRow) []string {
	a := rows["after"]
	var miss []string
	if a.sum.SuccessRate() < 0.999 {
		miss = append(miss, fmt.Sprintf("success %s < 99.9%%", report.Percent(a.sum.SuccessRate())))
	}
	if a.perCall() > 1.3 {
		miss = append(miss, fmt.Sprintf("amplification %.2f > 1.3", a.perCall()))
	}
	if rec := rows["recipe"]; rec != nil && a.sum.P99 >= rec.sum.P99 {
		miss = append(miss, "p99 not below the recipe's")
	}
	return miss
}

// notWorse holds detour to "never worse than no router": at least the
// recipe's success, at no more upstream calls per call.
func notWorse(rows map[string]*busyRow) []string {
	a, rec := rows["after"], rows["recipe"]
	if rec == nil {
		return nil
	}
	var miss []string
	if a.sum.SuccessRate() < rec.sum.SuccessRate() {
		miss = append(miss, fmt.Sprintf("success %s below the recipe's %s", report.Percent(a.sum.SuccessRate()), report.Percent(rec.sum.SuccessRate())))
	}
	if a.perCall() > rec.perCall()*1.02 {
		miss = append(miss, fmt.Sprintf("%.2f upstream calls per call, more than the recipe's %.2f", a.perCall(), rec.perCall()))
	}
	return miss
}

// clientRecipe is the common client recipe against an OpenAI endpoint: up
// to 3 attempts; between them 2^n s plus up to 1 s of jitter (n = failed
// attempts so far, capped at 30 s); a timeout per call; a client-side token
// bucket at the provider's QPS that every attempt waits on (none when qps
// is 0).
func clientRecipe(httpAddr string, qps float64, timeout time.Duration) load.Call {
	attempt := load.DirectHTTP(httpAddr, "hello, how are you today?", timeout)
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
