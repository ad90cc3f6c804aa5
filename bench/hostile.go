package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	hops "github.com/detour-dev/detour/internal/hop"
	"github.com/detour-dev/detour/internal/hostile"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("hostile", "hostile upstreams and configs (an endless cacheable stream, 200 MB bodies x 50, a routing loop): detour's peak RSS must stay under a bound in each", func() scenario { return &hostileScenario{} })
}

// hostileScenario runs each hostile case against a fresh detour child and
// holds it to its bound on peak RSS and its own criteria.
type hostileScenario struct {
	o     hostileOpts
	only  string
	cases []hostileCase

	// What run recorded, per case.
	runs    []*hostileRun
	took    time.Duration
	verdict []string // per case: "" for pass, else why (judge)
}

// hostileOpts are the knobs every hostile case shares.
type hostileOpts struct {
	dur    time.Duration
	budget string // --upstream-body-budget for detour, "" for its default
}

// flags are the detour serve flags of every case.
func (o hostileOpts) flags() []string {
	if o.budget == "" {
		return nil
	}
	return []string{"--upstream-body-budget", o.budget}
}

// hostileCase is one hostile upstream or config, run against a fresh detour
// child, with its pass criterion. The bound is on the child's peak RSS
// (VmHWM) over the whole case, start-up included.
type hostileCase struct {
	name, fault, load string
	boundMiB          int64
	run               func(ctx context.Context, o hostileOpts) (*hostileRun, error)
}

// hostileRun is what one case measured; fails are the problems the case
// saw on its way (calls that ended otherwise than they must, detour gone).
type hostileRun struct {
	peakRSS int64 // VmHWM of the detour child
	fails   []string
	note    string
}

func (r *hostileRun) fail(format string, args ...any) {
	r.fails = append(r.fails, fmt.Sprintf(format, args...))
}

func hostileCases() []hostileCase {
	return []hostileCase{
		{name: "endless stream", boundMiB: 64, run: hostileEndless,
			fault: "one upstream streams SSE content deltas without end, as fast as it is read",
			load:  "4 identical cacheable (temperature 0) StreamComplete calls, each read for the whole case"},
		{name: "huge bodies", boundMiB: 256, run: hostileBodies,
			fault: "one upstream answers every call 200 with a 200 MB body; its breaker never opens (thresholds out of reach), so every call reads",
			load:  "50 concurrent Complete calls, back to back (closed loop)"},
		{name: "routing loop", boundMiB: 64, run: hostileLoop,
			fault: "the own region's only backend is kind: detour through a TCP relay back to detour itself (undetectable at start); a second region has a good backend. Also: a backend at detour's own --listen address",
			load:  "8 concurrent Complete calls, back to back"},
	}
}

func (h *hostileScenario) flags(fs *flag.FlagSet) {
	fs.DurationVar(&h.o.dur, "duration", 5*time.Second, "load per case")
	fs.StringVar(&h.o.budget, "upstream-body-budget", "", "detour serve --upstream-body-budget (MiB) in every case; empty: detour's default")
	fs.StringVar(&h.only, "cases", "", "comma-separated case names to run (default all)")
}

func (h *hostileScenario) setup(context.Context) (func(), error) {
	h.cases = hostileCases()
	if h.only != "" {
		want := map[string]bool{}
		for _, n := range strings.Split(h.only, ",") {
			want[strings.TrimSpace(n)] = true
		}
		var sel []hostileCase
		for _, c := range h.cases {
			if want[c.name] {
				sel = append(sel, c)
				delete(want, c.name)
			}
		}
		if len(want) > 0 {
			return func() {}, fmt.Errorf("--cases: unknown %v", want)
		}
		h.cases = sel
	}
	return func() {}, nil
}

func (h *hostileScenario) run(ctx context.Context) error {
	started := time.Now()
	for _, c := range h.cases {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(stderr, "hostile: %s...\n", c.name)
		r, err := c.run(ctx, h.o)
		if err != nil {
			return fmt.Errorf("case %s: %w", c.name, err)
		}
		h.runs = append(h.runs, r)
		v := "pass"
		if fails := hostileJudge(c, r); len(fails) > 0 {
			v = "**FAIL**: " + strings.Join(fails, "; ")
		}
		fmt.Fprintf(stderr, "hostile: %s: peak RSS %s MiB: %s\n", c.name, report.MiB(r.peakRSS), v)
	}
	h.took = time.Since(started)
	return nil
}

// hostileJudge: the case's own problems, and its peak RSS within its bound.
func hostileJudge(c hostileCase, r *hostileRun) []string {
	fails := slices.Clone(r.fails)
	if r.peakRSS > c.boundMiB<<20 {
		fails = append(fails, fmt.Sprintf("peak RSS %s MiB > %d MiB", report.MiB(r.peakRSS), c.boundMiB))
	}
	return fails
}

func (h *hostileScenario) judge() ([]string, error) {
	h.verdict = make([]string, len(h.cases))
	failed := 0
	for i, c := range h.cases {
		if fails := hostileJudge(c, h.runs[i]); len(fails) > 0 {
			h.verdict[i] = strings.Join(fails, "; ")
			failed++
		}
	}
	if failed > 0 {
		return []string{fmt.Sprintf("%d of %d hostile cases failed", failed, len(h.cases))}, nil
	}
	return nil, nil
}

func (h *hostileScenario) report(w io.Writer) {
	var rows [][]string
	for i, c := range h.cases {
		r := h.runs[i]
		v := "pass"
		if h.verdict[i] != "" {
			v = "**FAIL**: " + h.verdict[i]
		}
		rows = append(rows, []string{c.name, c.fault, c.load, report.MiB(r.peakRSS), strconv.FormatInt(c.boundMiB, 10), v, r.note})
	}
	fmt.Fprintf(w, "### Hostile upstreams\n\n%s; load %s; %v of load per case, each against a fresh `detour serve` child with default flags (`--upstream-body-budget 32`, cache on with `max_entry_bytes` 1 MiB, `limits.max_hops` 4); hostile upstreams served by the bench process on loopback; peak RSS = the child's VmHWM over the case, start-up included; took %v.\n\n",
		report.Machine(), report.LoadAvg(), h.o.dur, h.took.Round(time.Second))
	fmt.Fprintln(w, report.Table([]string{"case", "upstream / config", "load", "peak RSS MiB", "bound MiB", "verdict", "note"}, rows))
}

// serveUpstream serves h on a loopback port in this process until stop.
func serveUpstream(h http.Handler) (base string, stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	return "http://" + lis.Addr().String() + "/v1", func() { srv.Close(); <-done }, nil
}

// watchRSS samples the child's RSS every 100 ms until stop, which returns
// the child's peak (VmHWM, which also covers the moments between samples).
func watchRSS(d *harness.Detour) (stop func() int64) {
	done := make(chan struct{})
	var peak int64
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if s := d.Proc(); s.HWM > peak {
				peak = s.HWM
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() int64 {
		close(done)
		wg.Wait()
		if s := d.Proc(); s.HWM > peak {
			peak = s.HWM
		}
		return peak
	}
}

// hostileEndless: cacheable streams from an upstream that never finishes.
// Before issue 13 the cache kept every chunk of such a stream until its end
// (RSS from 45 MB to 1.42 GB in 10 s); now it holds about max_entry_bytes.
func hostileEndless(ctx context.Context, o hostileOpts) (*hostileRun, error) {
	up, stop, err := serveUpstream(hostile.EndlessStream())
	if err != nil {
		return nil, err
	}
	defer stop()
	cfg, err := configYAML(&regions.Config{
		Regions: []regions.Region{region("h", 0, regions.Backend{Name: "endless", Endpoint: up})},
		Retry:   regions.RetryPolicy{AttemptTimeout: regions.Duration(10 * time.Second)},
	})
	if err != nil {
		return nil, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: cfg, Region: "h", Args: o.flags()})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()
	conn, err := load.Dial(dt.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := detourv1.NewRouterClient(conn)
	req := &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{{Role: "user", Content: "tell me everything"}}, Temperature: proto.Float64(0)}
	r := &hostileRun{}
	peak := watchRSS(dt)
	const streams = 4
	var got [streams]int64
	var ends [streams]error
	var wg sync.WaitGroup
	lctx, cancel := context.WithTimeout(ctx, o.dur)
	defer cancel()
	for i := range streams {
		wg.Go(func() {
			st, err := client.StreamComplete(lctx, req)
			if err != nil {
				ends[i] = err
				return
			}
			for {
				c, err := st.Recv()
				if err != nil {
					ends[i] = err
					return
				}
				got[i] += int64(len(c.GetDelta()))
			}
		})
	}
	wg.Wait()
	r.peakRSS = peak()
	var total int64
	for i := range streams {
		total += got[i]
		if c := status.Code(ends[i]); c != codes.DeadlineExceeded && c != codes.Canceled {
			r.fail("stream %d ended %v (%v), want only the client's own deadline", i, c, ends[i])
		}
		if got[i] < 10<<20 {
			r.fail("stream %d relayed %s MiB, want >= 10 MiB: the hostile stream did not run", i, report.MiB(got[i]))
		}
	}
	if !dt.Alive() {
		r.fail("detour died")
	}
	r.note = fmt.Sprintf("relayed %s MiB of content to the 4 callers in %v (%s MiB/s), none of it stored", report.MiB(total), o.dur, report.MiB(int64(float64(total)/o.dur.Seconds())))
	return r, nil
}

// hostileBodies: 50 calls at once, back to back, to an upstream whose
// every answer is a 200 MB body. Each call may read up to the per-call cap
// (16 MiB), 800 MiB for 50; the process-wide body budget (32 MiB) holds
// them to far less. Every call must fail cleanly (UNAVAILABLE: the attempt
// failed, no other backend), and detour must stay up.
func hostileBodies(ctx context.Context, o hostileOpts) (*hostileRun, error) {
	var n hostile.Counter
	up, stop, err := serveUpstream(n.Count(hostile.HugeBody(200 << 20)))
	if err != nil {
		return nil, err
	}
	defer stop()
	cfg, err := configYAML(&regions.Config{
		Regions: []regions.Region{region("h", 0, regions.Backend{Name: "huge", Endpoint: up})},
		Retry:   regions.RetryPolicy{MaxAttempts: 1, AttemptTimeout: regions.Duration(10 * time.Second)},
		Breaker: regions.BreakerPolicy{ConsecutiveBusy: 1000000, MinRequests: 1000000},
	})
	if err != nil {
		return nil, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: cfg, Region: "h", Args: o.flags()})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()
	conn, err := load.Dial(dt.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := detourv1.NewRouterClient(conn)
	r := &hostileRun{}
	peak := watchRSS(dt)
	run := load.ClosedLoop(ctx, 50, o.dur, 0, load.Unary(client, load.Request("a huge answer, please"), 30*time.Second))
	r.peakRSS = peak()
	sum := load.Summarize(run.Samples, run.Elapsed)
	for c, k := range sum.Codes {
		if c != codes.Unavailable {
			r.fail("%d calls ended %s, want every call UNAVAILABLE", k, load.CodeName(c))
		}
	}
	if !dt.Alive() {
		r.fail("detour died")
	}
	r.note = fmt.Sprintf("%d calls, every one UNAVAILABLE (a failed attempt: body over the per-call cap or the process budget) at p99 %s ms; %d upstream requests", sum.N, report.Ms(sum.P99), n.Started())
	return r, nil
}

// loopCallers is the concurrency of the routing loop case.
const loopCallers = 8

// relayBackend names the routing loop case's kind: detour backend.
const relayBackend = "relay"

// hostileLoop: a routing loop detour cannot see at start (through a TCP
// relay, as through a Service that leads back), and one it can (its own
// listen address).
func hostileLoop(ctx context.Context, o hostileOpts) (*hostileRun, error) {
	r := &hostileRun{}
	if err := hostileSelfRefused(r); err != nil {
		return nil, err
	}
	good, stopGood, err := serveUpstream(hostile.Answer(`{"id":"ok","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	if err != nil {
		return nil, err
	}
	defer stopGood()
	rel, err := startRelay()
	if err != nil {
		return nil, err
	}
	defer rel.stop()
	cfg, err := configYAML(&regions.Config{
		Regions: []regions.Region{
			region("loop", 0, regions.Backend{Name: relayBackend, Kind: regions.KindDetour, Endpoint: rel.addr}),
			region("good", 1, regions.Backend{Name: "good-1", Endpoint: good}),
		},
		Retry: regions.RetryPolicy{AttemptTimeout: regions.Duration(2 * time.Second)},
	})
	if err != nil {
		return nil, err
	}
	// detour's address must be known before it starts: its client connects
	// through the relay at once.
	addr, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	rel.target.Store(&addr)
	dt, err := harness.StartDetour(harness.DetourOptions{Config: cfg, Region: "loop", Metrics: true, Args: append(o.flags(), "--listen", addr)})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()
	conn, err := load.Dial(dt.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := detourv1.NewRouterClient(conn)
	// entered counts the client calls that went into the loop: answered
	// through the relay backend, or answered after a failed first attempt
	// (the relay's).
	var entered atomic.Int64
	req := load.Request("loop")
	call := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := client.Complete(ctx, req)
		if err != nil || resp.GetServedBy().GetBackend() == relayBackend || resp.GetAttempts() > 1 {
			entered.Add(1)
		}
		return err
	}
	peak := watchRSS(dt)
	run := load.ClosedLoop(ctx, loopCallers, o.dur, 0, call)
	r.peakRSS = peak()
	sum := load.Summarize(run.Samples, run.Elapsed)
	if sum.SuccessRate() < 1 {
		r.fail("success %s (%s), want 100%%", report.Percent(sum.SuccessRate()), sum.CodesText())
	}
	calls, err := dt.MetricSum(ctx, "detour_calls_total", `method="Complete"`)
	if err != nil {
		return nil, err
	}
	refused, err := dt.MetricSum(ctx, "detour_calls_total", `code="FailedPrecondition"`)
	if err != nil {
		return nil, err
	}
	perCall := calls / float64(max(sum.N, 1))
	// A client call that enters the loop makes at most four nested calls
	// that pass (hops 1-4) and a fifth that is refused; a chain ends sooner
	// when a hop picks the good region instead (the relay's breaker opened,
	// or the balancer found the relay loaded). So the loop must have been
	// cut at the hop limit at least once, and each client call that entered
	// it accounts for at most max_hops+1 nested calls.
	nested := calls - float64(sum.N)
	chains := float64(entered.Load())
	switch limit := float64(hops.DefaultMax+1) * chains; {
	case refused == 0:
		r.fail("no call was refused at the hop limit: the loop was not cut (%.0f nested calls)", nested)
	case nested > limit:
		r.fail("%.0f nested calls, want <= %.0f: %d per client call that entered the loop (%.0f)", nested, limit, hops.DefaultMax+1, chains)
	}
	if !dt.Alive() {
		r.fail("detour died")
	}
	r.note = fmt.Sprintf("%d client calls, success %s at p99 %s ms, %.2f detour calls each; %.0f entered the loop, making %.0f nested calls, %.0f of them refused at the hop limit, which the relay backend's breaker counted until it opened (later calls go straight to the good region); with the backend at its own --listen address, detour serve refuses to start: %s",
		sum.N, report.Percent(sum.SuccessRate()), report.Ms(sum.P99), perCall, chains, nested, refused, r.note)
	return r, nil
}

// hostileSelfRefused starts detour serve with a kind: detour backend at its
// own --listen address: it must exit at once, naming the loop.
func hostileSelfRefused(r *hostileRun) error {
	bin, _, err := harness.Binaries()
	if err != nil {
		return err
	}
	addr, err := harness.FreePort()
	if err != nil {
		return err
	}
	dir, err := harness.WorkDir()
	if err != nil {
		return err
	}
	// Valid as a document: only serve, which knows its own address, can
	// tell that it is a loop.
	cfg, err := configYAML(&regions.Config{Regions: []regions.Region{region("a", 0, regions.Backend{Name: "myself", Kind: regions.KindDetour, Endpoint: addr})}})
	if err != nil {
		return err
	}
	path := dir + "/self-loop.yaml"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	c, err := harness.StartChild("detour-self-loop", bin, []string{"serve", "--config", path, "--listen", addr, "--region", "a"},
		func(line string) bool { return strings.Contains(line, "detour serving") }, 10*time.Second)
	switch {
	case err == nil:
		c.Stop()
		r.fail("detour serve started with a backend at its own --listen address")
		r.note = "it started"
	case strings.Contains(err.Error(), "routing loop"):
		r.note = "exit 1, \"config routes calls back to this instance: ... (a routing loop)\""
	default:
		r.fail("detour serve with a backend at its own address: %v, want an error naming the routing loop", firstLine(err.Error()))
		r.note = "it failed otherwise"
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// relay forwards TCP connections to target: a path back to detour that
// detour cannot recognise as itself.
type relay struct {
	addr   string
	target atomic.Pointer[string]
	conns  atomic.Int64
	lis    net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	open   map[net.Conn]bool
}

func startRelay() (*relay, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rl := &relay{addr: lis.Addr().String(), lis: lis, open: map[net.Conn]bool{}}
	rl.wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			rl.conns.Add(1)
			rl.wg.Go(func() { rl.forward(c) })
		}
	})
	return rl, nil
}

func (rl *relay) track(cs ...net.Conn) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.open == nil {
		return false
	}
	for _, c := range cs {
		rl.open[c] = true
	}
	return true
}

func (rl *relay) forward(c net.Conn) {
	defer c.Close()
	t := rl.target.Load()
	if t == nil {
		return
	}
	// detour's client connects before detour listens: wait for it, as a
	// Service would for its pod.
	var u net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if u, err = net.Dial("tcp", *t); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return
	}
	defer u.Close()
	if !rl.track(c, u) {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	<-done
}

func (rl *relay) stop() {
	rl.lis.Close()
	rl.mu.Lock()
	for c := range rl.open {
		c.Close()
	}
	rl.open = nil
	rl.mu.Unlock()
	rl.wg.Wait()
}
