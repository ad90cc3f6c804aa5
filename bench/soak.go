package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("soak", "steady load while the primary region's busy rate changes; RSS, goroutines, heap sampled; pass: no failed call, no upward trend", func() scenario { return &soak{} })
}

// soak offers steady load for a long time while the own region's busy rate
// cycles, and samples detour's RSS, threads, goroutines and heap: memory
// and goroutines must not trend up, and no call may fail.
type soak struct {
	dur, every, sampleEvery, warm time.Duration
	rate                          float64
	schedule                      string
	rates                         []float64
	maxRSSGrowth, maxGorGrowth    float64

	fakes []*harness.Fake
	dt    *harness.Detour
	call  load.Call

	// What run recorded.
	samples []soakSample
	sum     load.Summary
	foreign float64
}

// soakSample is one reading of the detour child.
type soakSample struct {
	at               time.Duration
	busy             float64
	calls, failed    int
	rss              int64
	threads          int
	goroutines, heap float64 // -1 without /metrics
}

func (s *soak) flags(fs *flag.FlagSet) {
	fs.DurationVar(&s.dur, "duration", 20*time.Minute, "length of the soak")
	fs.Float64Var(&s.rate, "rate", 200, "offered calls per second (open loop)")
	fs.DurationVar(&s.every, "change-every", time.Minute, "how often the east region's busy rate changes")
	fs.DurationVar(&s.sampleEvery, "sample-every", 10*time.Second, "how often detour's RSS, goroutines and heap are read")
	fs.DurationVar(&s.warm, "warmup", 0, "samples before this are left out of the trend (0: a fifth of the duration)")
	fs.StringVar(&s.schedule, "busy", "0,0.5,1,0.2,0.8,0.3", "busy rates of both east backends, cycled every --change-every")
	fs.Float64Var(&s.maxRSSGrowth, "max-rss-growth", 4, "fail when the fitted RSS growth over the post-warm-up window exceeds this many MiB and 10% of the mean")
	fs.Float64Var(&s.maxGorGrowth, "max-goroutine-growth", 50, "fail when the fitted goroutine growth over the post-warm-up window exceeds this and 10% of the mean")
}

// soakConfig is the east region (two backends) first, west second, and a
// fallback; attempts time out after 2 s.
func soakConfig(ep map[string]string) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{
			region("east", 0, regions.Backend{Name: "east-a", Endpoint: ep["east-a"]}, regions.Backend{Name: "east-b", Endpoint: ep["east-b"]}),
			region("west", 1, regions.Backend{Name: "west-a", Endpoint: ep["west-a"]}),
		},
		Fallbacks: []regions.Backend{{Name: "fallback", Endpoint: ep["fallback"]}},
		Retry:     regions.RetryPolicy{AttemptTimeout: regions.Duration(2 * time.Second)},
	}
}

func (s *soak) setup(ctx context.Context) (func(), error) {
	var st stack
	for _, f := range strings.Split(s.schedule, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 || v > 1 {
			return st.stop, fmt.Errorf("--busy: %q is not a rate in [0, 1]", f)
		}
		s.rates = append(s.rates, v)
	}
	if s.warm == 0 {
		s.warm = s.dur / 5
	}
	base := fakellm.Settings{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}
	ep := map[string]string{}
	for _, b := range []struct{ name, region string }{{"east-a", "east"}, {"east-b", "east"}, {"west-a", "west"}, {"fallback", "fallback"}} {
		f, err := harness.StartFake(fakellm.Config{Name: b.name, Region: b.region, Settings: base}, false)
		if err != nil {
			return st.stop, err
		}
		st.add(f.Stop)
		s.fakes = append(s.fakes, f)
		ep[b.name] = f.OpenAIEndpoint()
	}
	doc, err := configYAML(soakConfig(ep))
	if err != nil {
		return st.stop, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "east", Metrics: true})
	if err != nil {
		return st.stop, err
	}
	st.add(dt.Stop)
	s.dt = dt
	conn, err := st.dial(dt.Addr)
	if err != nil {
		return st.stop, err
	}
	s.call = load.Unary(detourv1.NewRouterClient(conn), load.Request("hello, how are you today?"), 10*time.Second)
	if err := s.call(ctx); err != nil {
		return st.stop, fmt.Errorf("first call: %w", err)
	}
	return st.stop, nil
}

func (s *soak) run(ctx context.Context) error {
	// Live counts for the samples; the load's own record is exact.
	var calls, failed atomicCounter
	counted := func(ctx context.Context) error {
		err := s.call(ctx)
		calls.add()
		if err != nil {
			failed.add()
		}
		return err
	}
	setBusy := func(v float64) error {
		for _, f := range s.fakes[:2] {
			if err := f.Control(map[string]any{"busy_rate": v}); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setBusy(s.rates[0]); err != nil {
		return err
	}
	mark := harness.MarkCPU()
	loadDone := make(chan *load.Run, 1)
	began := time.Now()
	go func() { loadDone <- load.OpenLoop(ctx, s.rate, s.dur, 20000, nil, counted) }()

	metrics := s.dt.Metrics != ""
	read := func(busy float64) {
		p := s.dt.Proc()
		smp := soakSample{at: time.Since(began), busy: busy, calls: calls.get(), failed: failed.get(), rss: p.RSS, threads: p.Threads, goroutines: -1, heap: -1}
		if metrics {
			if g, h, err := s.dt.MetricsSample(ctx); err == nil {
				smp.goroutines, smp.heap = g, h
			} else {
				fmt.Fprintln(stderr, "soak: /metrics:", err)
			}
		}
		s.samples = append(s.samples, smp)
		fmt.Fprintf(stderr, "soak %6s busy %.2f calls %d failed %d rss %s MiB threads %d goroutines %.0f heap %.1f MiB\n",
			smp.at.Round(time.Second), busy, smp.calls, smp.failed, report.MiB(smp.rss), smp.threads, smp.goroutines, smp.heap/(1<<20))
	}
	// Heap in use rises and falls with every GC cycle (detour keeps a 16 MiB
	// heap-goal floor, so a cycle is seconds long at this load): a sample
	// every few seconds would fit a slope to where in the cycle each one
	// fell. The heap is read every 250 ms instead and each row keeps the
	// lowest reading since the last: the troughs follow the live heap.
	heapMin := -1.0
	heapTick := time.NewTicker(250 * time.Millisecond)
	defer heapTick.Stop()
	sampleTick := time.NewTicker(s.sampleEvery)
	defer sampleTick.Stop()
	changeTick := time.NewTicker(s.every)
	defer changeTick.Stop()
	cur, idx := s.rates[0], 0
	read(cur)
	var r *load.Run
wait:
	for {
		select {
		case r = <-loadDone:
			break wait
		case <-heapTick.C:
			if metrics {
				if _, h, err := s.dt.MetricsSample(ctx); err == nil && (heapMin < 0 || h < heapMin) {
					heapMin = h
				}
			}
		case <-sampleTick.C:
			read(cur)
			if n := len(s.samples); n > 0 && heapMin >= 0 && heapMin < s.samples[n-1].heap {
				s.samples[n-1].heap = heapMin
			}
			heapMin = -1
		case <-changeTick.C:
			idx = (idx + 1) % len(s.rates)
			cur = s.rates[idx]
			if err := setBusy(cur); err != nil {
				return err
			}
		}
	}
	if len(s.samples) == 0 || time.Since(began)-s.samples[len(s.samples)-1].at > s.sampleEvery/2 {
		read(cur)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.foreign = mark.ForeignCPU()
	s.sum = load.Summarize(r.Samples, r.Elapsed)
	if !s.dt.Alive() {
		return fmt.Errorf("detour exited during the soak: %v\n%s", s.dt.Err(), s.dt.TailText())
	}
	return nil
}

// soakVerdict is the trend lines and the criteria missed.
type soakVerdict struct {
	lines, why []string
}

// soakJudge fits a line to each resource over the samples from warm on:
// RSS (and heap) may not grow by more than maxRSS MiB, goroutines by more
// than maxGor (threads by 4 without /metrics), each beyond 10% of its mean;
// and no call may fail, since west and the fallback stay healthy.
func soakJudge(samples []soakSample, warm time.Duration, metrics bool, sum load.Summary, maxRSS, maxGor float64) soakVerdict {
	var v soakVerdict
	var post []soakSample
	for _, s := range samples {
		if s.at >= warm {
			post = append(post, s)
		}
	}
	trend := func(name, unit string, get func(soakSample) float64, absMax float64) string {
		if len(post) < 3 {
			return fmt.Sprintf("%s: too few samples after warm-up", name)
		}
		xs, ys := make([]float64, len(post)), make([]float64, len(post))
		mean := 0.0
		for i, s := range post {
			xs[i], ys[i] = s.at.Minutes(), get(s)
			mean += ys[i]
		}
		mean /= float64(len(ys))
		slope := load.Slope(xs, ys)
		span := xs[len(xs)-1] - xs[0]
		growth := slope * span
		verdict := "flat"
		if growth > absMax && growth > 0.1*mean {
			verdict = "**RISING**"
			v.why = append(v.why, fmt.Sprintf("%s rises %.2f %s/min", name, slope, unit))
		}
		return fmt.Sprintf("%s: slope %+.3f %s/min (fitted change %+.2f %s over %.1f min, mean %.1f %s): %s", name, slope, unit, growth, unit, span, mean, unit, verdict)
	}
	v.lines = []string{trend("RSS", "MiB", func(s soakSample) float64 { return float64(s.rss) / (1 << 20) }, maxRSS)}
	if metrics {
		v.lines = append(v.lines,
			trend("goroutines", "", func(s soakSample) float64 { return s.goroutines }, maxGor),
			trend("heap in use", "MiB", func(s soakSample) float64 { return s.heap / (1 << 20) }, maxRSS))
	} else {
		v.lines = append(v.lines, trend("threads", "", func(s soakSample) float64 { return float64(s.threads) }, 4))
	}
	if sum.OK != sum.N {
		v.why = append(v.why, fmt.Sprintf("%d of %d calls failed (%s); west and the fallback were healthy, so the policy should have absorbed every busy answer", sum.N-sum.OK, sum.N, sum.CodesText()))
	}
	return v
}

func (s *soak) verdict() soakVerdict {
	return soakJudge(s.samples, s.warm, s.dt.Metrics != "", s.sum, s.maxRSSGrowth, s.maxGorGrowth)
}

func (s *soak) judge() ([]string, error) {
	if why := s.verdict().why; len(why) > 0 {
		return []string{strings.Join(why, "; ")}, nil
	}
	return nil, nil
}

func (s *soak) report(w io.Writer) {
	metrics := s.dt.Metrics != ""
	fmt.Fprintf(w, "### Soak\n\n%s; load %s; other processes used %.2f cores on average; %.0f calls/s offered (open loop) for %v; east-a and east-b busy rate cycling %s every %v; west-a and a fallback healthy; samples every %v, trend fitted after %v.",
		report.Machine(), report.LoadAvg(), s.foreign, s.rate, s.dur, s.schedule, s.every, s.sampleEvery, s.warm)
	if !metrics {
		fmt.Fprintf(w, " `detour serve` has no --metrics yet: goroutines and heap are not sampled (only /proc: RSS, threads).")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	var rows [][]string
	for _, smp := range s.samples {
		g, h := "-", "-"
		if smp.goroutines >= 0 {
			g, h = fmt.Sprintf("%.0f", smp.goroutines), fmt.Sprintf("%.1f", smp.heap/(1<<20))
		}
		rows = append(rows, []string{smp.at.Round(time.Second).String(), fmt.Sprintf("%.2f", smp.busy), fmt.Sprint(smp.calls), fmt.Sprint(smp.failed), report.MiB(smp.rss), fmt.Sprint(smp.threads), g, h})
	}
	fmt.Fprintln(w, report.Table([]string{"t", "east busy rate", "calls", "failed", "RSS MiB", "threads", "goroutines", "heap in use MiB (lowest since the last row)"}, rows))
	v := s.verdict()
	sum := s.sum
	fmt.Fprintf(w, "Calls: %d, OK %d (%s), p50 %s ms, p99 %s ms, max %s ms; errors: %s.\n\n", sum.N, sum.OK, report.Percent(sum.SuccessRate()), report.Ms(sum.P50), report.Ms(sum.P99), report.Ms(sum.Max), sum.CodesText())
	for _, l := range v.lines {
		fmt.Fprintf(w, "- %s\n", l)
	}
	verdict := "pass"
	if len(v.why) > 0 {
		verdict = "FAIL: " + strings.Join(v.why, "; ")
	}
	fmt.Fprintf(w, "\nVerdict: %s\n\n", verdict)
}

// atomicCounter counts from many goroutines.
type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) add()     { c.n.Add(1) }
func (c *atomicCounter) get() int { return int(c.n.Load()) }
