package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
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
	register("chaos", "faults between detour and its backends (Toxiproxy in process), hangs, cuts, SIGTERM, a 10x burst, etcd restarted, Redis killed: one table with verdicts", func() scenario { return &chaos{} })
}

// chaosOpts are the knobs every case shares.
type chaosOpts struct {
	rate           float64
	dur            time.Duration
	faultAt        time.Duration
	attemptTimeout time.Duration
	deadline       time.Duration
	maxAmp         float64
	// maxInflight is detour's limits.max_inflight in the cases marked
	// limited; 0 means none. See inflightLimit for the default.
	maxInflight int
}

// inflightHeadroom sizes the default limits.max_inflight: this many times
// the calls that 20 ms backends hold at the offered rate (Little's law:
// rate x latency), so 32 at 200 calls/s. The normal rate stays far below
// it (about 5.5 calls at 200 calls/s with jitter and detour's own time);
// the 10x burst, holding at least 10 x rate x 20 ms, must exceed it.
const inflightHeadroom = 8

// inflightLimit turns the --max-inflight flag into the limit: 0 picks
// inflightHeadroom x rate x 20 ms, negative means none.
func inflightLimit(flag int, rate float64) int {
	switch {
	case flag < 0:
		return 0
	case flag == 0:
		return int(math.Round(inflightHeadroom * rate * chaosBackendLatency.Seconds()))
	}
	return flag
}

// chaosBurstFor is how long the burst case offers 10x the rate.
const chaosBurstFor = 3 * time.Second

// chaosBackendLatency is the fakellm latency of every case but SIGTERM.
const chaosBackendLatency = 20 * time.Millisecond

// chaosStack is four fakellm processes (east-a, east-b in the router's own
// region, west-a in a second region, a fallback), each behind its own
// Toxiproxy proxy, which is the address detour knows them by.
type chaosStack struct {
	bg      sync.WaitGroup // faults that keep changing during a case
	names   []string
	fakes   map[string]*harness.Fake
	proxies map[string]*toxiproxy.Proxy
}

var chaosBackends = []struct{ name, region string }{
	{"east-a", "east"}, {"east-b", "east"}, {"west-a", "west"}, {"fallback", "fallback"},
}

// chaosBase is every fakellm's setting at the start of a case.
var chaosBase = map[string]any{"latency": "20ms", "jitter": "5ms", "busy_rate": 0, "qps": 0, "hang_rate": 0,
	"tokens_per_sec": 0, "garbage_rate": 0, "cut_rate": 0}

func startChaosStack() (*chaosStack, error) {
	s := &chaosStack{fakes: map[string]*harness.Fake{}, proxies: map[string]*toxiproxy.Proxy{}}
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	for _, b := range chaosBackends {
		f, err := harness.StartFake(fakellm.Config{Name: b.name, Region: b.region,
			Settings: fakellm.Settings{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}}, false)
		if err != nil {
			s.stop()
			return nil, err
		}
		s.names = append(s.names, b.name)
		s.fakes[b.name] = f
		p := toxiproxy.NewProxy(api, b.name, "127.0.0.1:0", f.HTTP)
		if err := p.Start(); err != nil {
			s.stop()
			return nil, fmt.Errorf("toxiproxy %s: %w", b.name, err)
		}
		s.proxies[b.name] = p
	}
	return s, nil
}

func (s *chaosStack) stop() {
	for _, p := range s.proxies {
		p.Stop()
	}
	for _, f := range s.fakes {
		f.Stop()
	}
}

// reset removes every toxic and puts every fakellm back to chaosBase.
func (s *chaosStack) reset(ctx context.Context) error {
	s.bg.Wait()
	for _, n := range s.names {
		s.proxies[n].Toxics.ResetToxics(ctx)
		if err := s.fakes[n].Control(chaosBase); err != nil {
			return err
		}
	}
	return nil
}

// toxic adds a Toxiproxy toxic (see its README for types and attributes) to
// the named backends' proxies.
func (s *chaosStack) toxic(json string, backends ...string) error {
	for _, b := range backends {
		if _, err := s.proxies[b].Toxics.AddToxicJson(strings.NewReader(json)); err != nil {
			return fmt.Errorf("toxic on %s: %w", b, err)
		}
	}
	return nil
}

func (s *chaosStack) control(patch map[string]any, backends ...string) error {
	for _, b := range backends {
		if err := s.fakes[b].Control(patch); err != nil {
			return err
		}
	}
	return nil
}

func (s *chaosStack) upstreamTotals() (map[string]fakellm.Stats, error) {
	m := map[string]fakellm.Stats{}
	for _, n := range s.names {
		st, err := s.fakes[n].Stats()
		if err != nil {
			return nil, err
		}
		m[n] = st
	}
	return m, nil
}

// config is the cases' config: east (the router's own region, a backend in
// each of two zones), west second, the fallback; every backend through its
// proxy.
func (s *chaosStack) config(o chaosOpts) *regions.Config {
	ep := func(n string) string { return "http://" + s.proxies[n].Listen + "/v1" }
	return &regions.Config{
		Regions: []regions.Region{
			region("east", 0, regions.Backend{Name: "east-a", Endpoint: ep("east-a"), Zone: "east-1a"}, regions.Backend{Name: "east-b", Endpoint: ep("east-b"), Zone: "east-1b"}),
			region("west", 1, regions.Backend{Name: "west-a", Endpoint: ep("west-a")}),
		},
		Fallbacks: []regions.Backend{{Name: "fallback", Endpoint: ep("fallback")}},
		Retry:     regions.RetryPolicy{AttemptTimeout: regions.Duration(o.attemptTimeout)},
	}
}

// chaosCase is one fault with its pass criterion.
type chaosCase struct {
	name, fault string
	stream      bool
	// setup runs before the load (after reset); inject at faultAt.
	setup func(s *chaosStack) error
	// inject starts the fault at faultAt; a fault that keeps changing runs
	// on s.bg until ctx (the load) ends.
	inject func(ctx context.Context, s *chaosStack) error
	// prompt replaces the standard prompt.
	prompt string
	// rateAt overrides the constant rate (burst).
	rateAt func(o chaosOpts) func(time.Duration) float64
	// sigterm sends SIGTERM to detour at faultAt (the SIGTERM case).
	sigterm bool
	// limited runs detour with limits.max_inflight = --max-inflight. Only
	// cases whose calls stay short set it: a fault that holds calls for up
	// to the attempt timeout (latency, bandwidth, blackhole, hang) or 300 ms
	// backends (SIGTERM) keep far more calls in flight at the same rate,
	// beyond a limit sized for 20 ms backends.
	limited bool
	// judge returns "" for pass or why it failed; it may add a note.
	judge func(o chaosOpts, r *chaosRun) (fail, note string)
	// run, when set, replaces chaosRunCase (the etcd and Redis cases,
	// chaos_state.go); a chaosSkipped error skips the case.
	run func(ctx context.Context, st *chaosStack, o chaosOpts, c chaosCase) (*chaosRun, error)
}

// chaosRun is what one case measured.
type chaosRun struct {
	run       *load.Run
	sum       load.Summary
	amp       float64
	upstream  map[string]fakellm.Stats // deltas
	faultRel  time.Duration
	detourOK  bool // detour still running (or exited cleanly after SIGTERM)
	exitNote  string
	baseP99   time.Duration // p99 before the fault
	afterSum  load.Summary  // calls after the fault ended (burst) or after faultAt
	recovery  load.Summary  // burst: the last phase
	sigtermAt time.Duration
	upTotal   uint64
	// success, when set by a judge, replaces the success column (SIGTERM:
	// the share of accepted calls).
	success string
}

func chaosCases() []chaosCase {
	east := []string{"east-a", "east-b"}
	successAmp := func(minSuccess float64) func(o chaosOpts, r *chaosRun) (string, string) {
		return func(o chaosOpts, r *chaosRun) (string, string) {
			var why []string
			if r.sum.SuccessRate() < minSuccess {
				why = append(why, fmt.Sprintf("success < %s", report.Percent(minSuccess)))
			}
			if r.amp > o.maxAmp {
				why = append(why, fmt.Sprintf("amplification > %.1f", o.maxAmp))
			}
			if !r.detourOK {
				why = append(why, "detour died")
			}
			return strings.Join(why, "; "), ""
		}
	}
	return []chaosCase{
		{name: "baseline", fault: "none", limited: true,
			judge: func(o chaosOpts, r *chaosRun) (string, string) {
				f, n := successAmp(1)(o, r)
				if r.amp > 1.01 {
					f = strings.TrimPrefix(f+"; amplification > 1.01", "; ")
				}
				return f, n
			}},
		{name: "latency", fault: "+200 ms (Toxiproxy latency, downstream) on both east backends",
			inject: func(_ context.Context, s *chaosStack) error {
				return s.toxic(`{"name":"lat","type":"latency","stream":"downstream","attributes":{"latency":200}}`, east...)
			},
			judge: func(o chaosOpts, r *chaosRun) (string, string) {
				f, _ := successAmp(0.999)(o, r)
				if r.amp > 1.05 {
					f = strings.TrimPrefix(f+"; slow answers were retried (amplification > 1.05)", "; ")
				}
				return f, "slow but within the attempt timeout: served, not retried"
			}},
		{name: "bandwidth", fault: "1 KB/s both ways (Toxiproxy bandwidth) on both east backends; 2 KB prompts", prompt: strings.Repeat("lorem ipsum ", 170),
			inject: func(_ context.Context, s *chaosStack) error {
				if err := s.toxic(`{"name":"bw-up","type":"bandwidth","stream":"upstream","attributes":{"rate":1}}`, east...); err != nil {
					return err
				}
				return s.toxic(`{"name":"bw-down","type":"bandwidth","stream":"downstream","attributes":{"rate":1}}`, east...)
			},
			judge: successAmpNote(successAmp(0.999), "a request that cannot cross the link within the attempt timeout moves to west")},
		{name: "resets", fault: "TCP RST on every east connection that carries an answer during 100 ms of each second (Toxiproxy reset_peer, toggled)", limited: true,
			inject: func(ctx context.Context, s *chaosStack) error {
				s.bg.Go(func() {
					tick := time.NewTicker(time.Second)
					defer tick.Stop()
					for {
						if err := s.toxic(`{"name":"rst","type":"reset_peer","stream":"downstream","attributes":{"timeout":0}}`, east...); err != nil {
							fmt.Fprintln(stderr, "chaos: resets:", err)
							return
						}
						select {
						case <-time.After(100 * time.Millisecond):
						case <-ctx.Done():
						}
						for _, b := range east {
							s.proxies[b].Toxics.RemoveToxic(context.Background(), "rst")
						}
						select {
						case <-tick.C:
						case <-ctx.Done():
							return
						}
					}
				})
				return nil
			},
			judge: successAmpNote(successAmp(0.999), "reset attempts are retried elsewhere")},
		{name: "blackhole region", fault: "east region blackholed: connections accepted, every byte dropped both ways (Toxiproxy timeout 0)",
			inject: func(_ context.Context, s *chaosStack) error {
				if err := s.toxic(`{"name":"bh-up","type":"timeout","stream":"upstream","attributes":{"timeout":0}}`, east...); err != nil {
					return err
				}
				return s.toxic(`{"name":"bh-down","type":"timeout","stream":"downstream","attributes":{"timeout":0}}`, east...)
			},
			judge: successAmpNote(successAmp(0.999), "attempts time out, breakers open, west serves")},
		{name: "hang", fault: "both east backends accept 30% of requests and never answer (fakellm hang_rate 0.3)",
			inject: func(_ context.Context, s *chaosStack) error {
				return s.control(map[string]any{"hang_rate": 0.3}, east...)
			},
			judge: successAmpNote(successAmp(0.999), "hung attempts time out and are retried")},
		{name: "cut (unary)", fault: "east backends cut 30% of answers half-way (fakellm cut_rate 0.3)", limited: true,
			inject: func(_ context.Context, s *chaosStack) error {
				return s.control(map[string]any{"cut_rate": 0.3}, east...)
			},
			judge: successAmpNote(successAmp(0.999), "a cut body is a failed attempt, retried")},
		{name: "cut mid-stream", fault: "east backends cut 30% of streams half-way (fakellm cut_rate 0.3); StreamComplete calls", stream: true, limited: true,
			inject: func(_ context.Context, s *chaosStack) error {
				return s.control(map[string]any{"cut_rate": 0.3}, east...)
			},
			judge: func(o chaosOpts, r *chaosRun) (string, string) {
				var why []string
				for c, n := range r.sum.Codes {
					if c != codes.OK && c != codes.Unavailable {
						why = append(why, fmt.Sprintf("%d calls ended %s, want UNAVAILABLE", n, load.CodeName(c)))
					}
				}
				if !r.detourOK {
					why = append(why, "detour died")
				}
				return strings.Join(why, "; "), "a stream cut after its first chunk cannot fail over: it must end UNAVAILABLE, never OK without finish_reason"
			}},
		{name: "SIGTERM under load", fault: "SIGTERM to detour mid-run (backends 300 ms, --grace 10s)", sigterm: true,
			setup: func(s *chaosStack) error {
				return s.control(map[string]any{"latency": "300ms", "jitter": "0s"}, s.names...)
			},
			judge: judgeSigterm},
		{name: "burst 10x", fault: "offered rate x10 for 3 s, then back", limited: true,
			rateAt: func(o chaosOpts) func(time.Duration) float64 {
				return func(t time.Duration) float64 {
					if t >= o.faultAt && t < o.faultAt+chaosBurstFor {
						return 10 * o.rate
					}
					return o.rate
				}
			},
			judge: judgeBurst},
	}
}

func successAmpNote(f func(chaosOpts, *chaosRun) (string, string), note string) func(chaosOpts, *chaosRun) (string, string) {
	return func(o chaosOpts, r *chaosRun) (string, string) {
		fail, _ := f(o, r)
		return fail, note
	}
}

// judgeSigterm: every call sent before SIGTERM (5 ms margin) succeeds; a
// call after it either succeeds or is refused before it reached detour
// (dial error); detour exits 0 within its grace; no upstream call was
// abandoned.
func judgeSigterm(o chaosOpts, r *chaosRun) (string, string) {
	var why []string
	before, refused, lost, inflight := 0, 0, 0, 0
	for _, s := range r.run.Samples {
		if s.Start < r.sigtermAt && s.End() > r.sigtermAt && s.Code != load.CodeGenOverload {
			inflight++
		}
		if s.Start < r.sigtermAt-5*time.Millisecond {
			before++
			if s.Code != codes.OK {
				lost++
			}
			continue
		}
		if s.Code == codes.OK {
			continue
		}
		if isRefused(s.Err) {
			refused++
		} else {
			lost++
		}
	}
	if lost > 0 {
		why = append(why, fmt.Sprintf("%d accepted calls lost", lost))
	}
	accepted := len(r.run.Samples) - refused
	if accepted > 0 {
		r.success = report.Percent(float64(accepted-lost)/float64(accepted)) + " of accepted"
		r.amp = float64(r.upTotal) / float64(accepted)
	}
	canceled := uint64(0)
	for _, st := range r.upstream {
		canceled += st.Canceled
	}
	if canceled > 0 {
		why = append(why, fmt.Sprintf("%d upstream calls abandoned", canceled))
	}
	if !r.detourOK {
		why = append(why, "detour did not exit 0 within its grace: "+r.exitNote)
	}
	return strings.Join(why, "; "), fmt.Sprintf("%d calls sent before SIGTERM (%d of them in flight at the signal), all must succeed; %d later calls refused at connect (never accepted)", before, inflight, refused)
}

// isRefused reports whether err is a call that never reached detour: the
// connection could not be made.
func isRefused(err error) bool {
	if err == nil || status.Code(err) != codes.Unavailable {
		return false
	}
	m := status.Convert(err).Message()
	return strings.Contains(m, "connection refused") || strings.Contains(m, "while dialing")
}

// judgeBurst: detour stays up; during the burst it sheds what is beyond
// limits.max_inflight, every refused call RESOURCE_EXHAUSTED at the
// in-flight limit with a RetryInfo, and nothing else fails; no call is shed
// before the burst, nor after it once the calls it admitted have ended
// (until then they hold the limit); when the burst must exceed the limit
// (by Little's law it keeps at least 10 x rate x 20 ms calls in flight),
// some calls were shed; in the last 2 s every call succeeds again within
// the normal latency.
func judgeBurst(o chaosOpts, r *chaosRun) (string, string) {
	var why []string
	if !r.detourOK {
		why = append(why, "detour died")
	}
	from, to := o.faultAt, o.faultAt+chaosBurstFor
	offered, noRetry := 0, 0
	var shedAt []time.Duration // starts of the shed calls
	failed := map[codes.Code]int{}
	var admitted []load.Sample // sent during the burst and not shed
	for _, s := range r.run.Samples {
		in := s.Start >= from && s.Start < to
		if in {
			offered++
		}
		if s.Code == load.CodeGenOverload {
			continue // never sent: the generator's bound, not detour
		}
		if isShed, retry := shedStatus(s.Err); isShed {
			shedAt = append(shedAt, s.Start)
			if !retry {
				noRetry++
			}
			continue
		}
		if s.Code != codes.OK {
			failed[s.Code]++
		}
		if in {
			admitted = append(admitted, s)
		}
	}
	adm := load.Summarize(admitted, 0)
	drained := to + adm.Max // the last call the burst admitted has ended
	shed, shedAfter, shedOutside := 0, time.Duration(0), 0
	for _, at := range shedAt {
		switch {
		case at >= from && at < to:
			shed++
		case at >= to && at < drained:
			shedAfter++
		default:
			shedOutside++
		}
	}
	for c, n := range failed {
		why = append(why, fmt.Sprintf("%d calls ended %s (only a shed RESOURCE_EXHAUSTED may fail)", n, load.CodeName(c)))
	}
	if noRetry > 0 {
		why = append(why, fmt.Sprintf("%d shed calls without a RetryInfo", noRetry))
	}
	if shedOutside > 0 {
		why = append(why, fmt.Sprintf("%d calls shed before the burst or after its admitted calls ended", shedOutside))
	}
	if least := 10 * o.rate * chaosBackendLatency.Seconds(); o.maxInflight > 0 && least > float64(o.maxInflight) && len(shedAt) == 0 {
		why = append(why, fmt.Sprintf("nothing shed although the burst keeps at least %.0f calls in flight, above limits.max_inflight %d", least, o.maxInflight))
	}
	if r.recovery.SuccessRate() < 1 {
		why = append(why, fmt.Sprintf("recovery phase success %s < 100%%", report.Percent(r.recovery.SuccessRate())))
	}
	limit := max(3*r.baseP99, 100*time.Millisecond)
	if r.recovery.P99 > limit {
		why = append(why, fmt.Sprintf("recovery p99 %s ms > %s ms", report.Ms(r.recovery.P99), report.Ms(limit)))
	}
	shedShare := 0.0
	if offered > 0 {
		shedShare = float64(shed) / float64(offered)
	}
	return strings.Join(why, "; "), fmt.Sprintf("limits.max_inflight %d; before: p99 %s ms; burst: %d offered, %d shed (%s) with RESOURCE_EXHAUSTED + RetryInfo, %d not sent by the generator; admitted %d: success %s, p99 %s ms, max %s ms; shed in the %s ms after the burst while its admitted calls ended: %d, later or before it: %d; last 2 s: success %s, p99 %s ms",
		o.maxInflight, report.Ms(r.baseP99), offered, shed, report.Percent(shedShare), r.afterSum.Codes[load.CodeGenOverload], adm.N, report.Percent(adm.SuccessRate()), report.Ms(adm.P99), report.Ms(adm.Max),
		report.Ms(adm.Max), shedAfter, shedOutside, report.Percent(r.recovery.SuccessRate()), report.Ms(r.recovery.P99))
}

// shedStatus reports whether err is detour's refusal of a call at its
// in-flight limit, and whether that refusal carries a RetryInfo with a
// positive delay.
func shedStatus(err error) (shed, retryInfo bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "in-flight limit") {
		return false, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return true, true
		}
	}
	return true, false
}

// chaos runs every case (or those of --cases) on one stack of backends,
// each against a fresh detour, and judges each by its own criterion.
type chaos struct {
	o     chaosOpts
	only  string
	list  bool
	cases []chaosCase
	st    *chaosStack

	// What run recorded, per case: the run, or why it was skipped.
	runs    []*chaosRun
	skipped []error
	took    time.Duration
	// verdicts per case, by judge: "" for pass, else why; and its note.
	fails, notes []string
}

func (c *chaos) flags(fs *flag.FlagSet) {
	o := &c.o
	fs.Float64Var(&o.rate, "rate", 200, "offered calls per second (open loop); the burst case offers 10x for 3 s")
	fs.DurationVar(&o.dur, "duration", 8*time.Second, "load per case")
	fs.DurationVar(&o.faultAt, "fault-at", 2*time.Second, "when the fault starts, after the load")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", time.Second, "detour's retry.attempt_timeout in the cases' config")
	fs.DurationVar(&o.deadline, "deadline", 10*time.Second, "client deadline per call")
	fs.Float64Var(&o.maxAmp, "max-amp", 1.5, "pass bound on upstream requests per client call under a fault")
	fs.IntVar(&o.maxInflight, "max-inflight", 0, "detour's limits.max_inflight in the baseline, resets, cut and burst cases; 0: 8 x rate x 20 ms, the calls 20 ms backends hold at 8x the offered rate (32 at 200 calls/s); negative: none")
	fs.StringVar(&c.only, "cases", "", "comma-separated case names to run (default all); see -list")
	fs.BoolVar(&c.list, "list", false, "list the cases and exit")
}

func (c *chaos) setup(ctx context.Context) (func(), error) {
	o := &c.o
	if o.faultAt <= 0 || o.faultAt >= o.dur {
		return func() {}, fmt.Errorf("--fault-at %v must be > 0 and under --duration %v", o.faultAt, o.dur)
	}
	o.maxInflight = inflightLimit(o.maxInflight, o.rate)
	c.cases = append(chaosCases(), chaosStateCases()...)
	if c.list {
		for _, cs := range c.cases {
			fmt.Printf("%-20s %s\n", cs.name, cs.fault)
		}
		return func() {}, flag.ErrHelp // listed: nothing to run
	}
	if c.only != "" {
		want := map[string]bool{}
		for _, n := range strings.Split(c.only, ",") {
			want[strings.TrimSpace(n)] = true
		}
		var sel []chaosCase
		for _, cs := range c.cases {
			if want[cs.name] {
				sel = append(sel, cs)
				delete(want, cs.name)
			}
		}
		if len(want) > 0 {
			return func() {}, fmt.Errorf("--cases: unknown %v (see --list)", want)
		}
		c.cases = sel
	}
	st, err := startChaosStack()
	if err != nil {
		return func() {}, err
	}
	c.st = st
	return st.stop, nil
}

func (c *chaos) run(ctx context.Context) error {
	started := time.Now()
	for _, cs := range c.cases {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(stderr, "chaos: %s...\n", cs.name)
		runCase := chaosRunCase
		if cs.run != nil {
			runCase = cs.run
		}
		r, err := runCase(ctx, c.st, c.o, cs)
		if skip := chaosSkipped(""); errors.As(err, &skip) {
			c.runs, c.skipped = append(c.runs, nil), append(c.skipped, skip)
			fmt.Fprintf(stderr, "chaos: %s: %v\n", cs.name, skip)
			continue
		}
		if err != nil {
			return fmt.Errorf("case %s: %w", cs.name, err)
		}
		c.runs, c.skipped = append(c.runs, r), append(c.skipped, nil)
		v := "pass"
		if fail, _ := cs.judge(c.o, r); fail != "" {
			v = "**FAIL**: " + fail
		}
		fmt.Fprintf(stderr, "chaos: %s: %s\n", cs.name, v)
	}
	c.took = time.Since(started)
	return nil
}

func (c *chaos) judge() ([]string, error) {
	c.fails, c.notes = make([]string, len(c.cases)), make([]string, len(c.cases))
	failed := 0
	for i, cs := range c.cases {
		if c.runs[i] == nil {
			continue // skipped
		}
		c.fails[i], c.notes[i] = cs.judge(c.o, c.runs[i])
		if c.fails[i] != "" {
			failed++
		}
	}
	if failed > 0 {
		return []string{fmt.Sprintf("%d of %d chaos cases failed their criterion", failed, len(c.cases))}, nil
	}
	return nil, nil
}

func (c *chaos) report(w io.Writer) {
	o := c.o
	var rows [][]string
	for i, cs := range c.cases {
		r := c.runs[i]
		if r == nil {
			rows = append(rows, []string{cs.name, cs.fault, "-", "-", "-", "-", c.skipped[i].Error(), ""})
			continue
		}
		v := "pass"
		if c.fails[i] != "" {
			v = "**FAIL**: " + c.fails[i]
		}
		succ := report.Percent(r.sum.SuccessRate())
		if r.success != "" {
			succ = r.success
		}
		rows = append(rows, []string{cs.name, cs.fault, succ, report.Ms(r.sum.P99), fmt.Sprintf("%.2f", r.amp), r.sum.CodesText(), v, c.notes[i]})
	}
	fmt.Fprintf(w, "### Chaos\n\n%s; load %s; %.0f calls/s offered (open loop) for %v per case, fault from t=%v; detour attempt timeout %v; detour limits.max_inflight %d in the baseline, resets, cut and burst cases, none in the others; client deadline %v; amplification = upstream requests (fakellm /stats, all four backends) per client call; took %v.\n\n",
		report.Machine(), report.LoadAvg(), o.rate, o.dur, o.faultAt, o.attemptTimeout, o.maxInflight, o.deadline, c.took.Round(time.Second))
	fmt.Fprintln(w, report.Table([]string{"case", "fault", "client success", "p99 ms", "amplification", "errors", "verdict", "criterion / note"}, rows))
}

func chaosRunCase(ctx context.Context, st *chaosStack, o chaosOpts, c chaosCase) (*chaosRun, error) {
	if err := st.reset(ctx); err != nil {
		return nil, err
	}
	if c.setup != nil {
		if err := c.setup(st); err != nil {
			return nil, err
		}
	}
	extra := []string{}
	if c.sigterm {
		extra = append(extra, "--grace", "10s")
	}
	cfg := st.config(o)
	if c.limited && o.maxInflight > 0 {
		cfg.Limits.MaxInflight = o.maxInflight
	}
	doc, err := configYAML(cfg)
	if err != nil {
		return nil, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "east", Metrics: true, Args: extra})
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
	req := load.Request("hello, how are you today?")
	if c.prompt != "" {
		req = load.Request(c.prompt)
	}
	var call load.Call
	if c.stream {
		call = load.Stream(client, req, o.deadline)
	} else {
		call = load.Unary(client, req, o.deadline)
	}
	// One call first: detour answers before the clock starts.
	if err := load.Unary(client, req, o.deadline)(ctx); err != nil {
		return nil, fmt.Errorf("first call: %w", err)
	}
	before, err := st.upstreamTotals()
	if err != nil {
		return nil, err
	}
	var rateAt func(time.Duration) float64
	if c.rateAt != nil {
		rateAt = c.rateAt(o)
	}
	r := &chaosRun{detourOK: true}
	var faultTime time.Time
	injected := make(chan error, 1)
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-time.After(o.faultAt):
		case <-loadCtx.Done():
			injected <- nil
			return
		}
		var err error
		switch {
		case c.inject != nil:
			err = c.inject(loadCtx, st)
		case c.sigterm:
			err = dt.Signal(syscall.SIGTERM)
		}
		faultTime = time.Now()
		injected <- err
	}()
	r.run = load.OpenLoop(loadCtx, o.rate, o.dur, 20000, rateAt, call)
	cancel()
	st.bg.Wait()
	if err := <-injected; err != nil {
		return nil, fmt.Errorf("inject: %w", err)
	}
	if !faultTime.IsZero() {
		r.faultRel = faultTime.Sub(r.run.Began)
	}
	r.sum = load.Summarize(r.run.Samples, r.run.Elapsed)
	r.sigtermAt = r.faultRel
	r.baseP99 = load.Summarize(load.Window(r.run.Samples, 0, o.faultAt), 0).P99
	r.afterSum = load.Summarize(load.Window(r.run.Samples, o.faultAt, o.dur), 0)
	if c.rateAt != nil {
		r.afterSum = load.Summarize(load.Window(r.run.Samples, o.faultAt, o.faultAt+chaosBurstFor), 0)
		r.recovery = load.Summarize(load.Window(r.run.Samples, o.dur-2*time.Second, o.dur), 0)
	}
	if c.sigterm {
		ok := dt.Wait(15 * time.Second)
		switch {
		case !ok:
			r.detourOK, r.exitNote = false, "still running 15 s after SIGTERM"
		case dt.Err() != nil:
			r.detourOK, r.exitNote = false, dt.Err().Error()
		}
	} else {
		r.detourOK = dt.Alive()
	}
	after, err := st.upstreamTotals()
	if err != nil {
		return nil, err
	}
	r.upstream = map[string]fakellm.Stats{}
	var up uint64
	for n, a := range after {
		b := before[n]
		d := fakellm.Stats{Total: a.Total - b.Total, OK: a.OK - b.OK, Canceled: a.Canceled - b.Canceled}
		r.upstream[n] = d
		up += d.Total
	}
	r.upTotal = up
	if n := r.sum.N - r.sum.Codes[load.CodeGenOverload]; n > 0 {
		r.amp = float64(up) / float64(n)
	}
	return r, nil
}
