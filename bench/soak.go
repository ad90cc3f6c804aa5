package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("soak", "steady load while the primary region's busy rate changes; RSS, goroutines, heap sampled; pass: no failed call, no upward trend", soak)
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

func soak(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	dur := fs.Duration("duration", 20*time.Minute, "length of the soak")
	rate := fs.Float64("rate", 200, "offered calls per second (open loop)")
	every := fs.Duration("change-every", time.Minute, "how often the east region's busy rate changes")
	sampleEvery := fs.Duration("sample-every", 10*time.Second, "how often detour's RSS, goroutines and heap are read")
	warm := fs.Duration("warmup", 0, "samples before this are left out of the trend (0: a fifth of the duration)")
	schedule := fs.String("busy", "0,0.5,1,0.2,0.8,0.3", "busy rates of both east backends, cycled every --change-every")
	maxRSSGrowth := fs.Float64("max-rss-growth", 4, "fail when the fitted RSS growth over the post-warm-up window exceeds this many MiB and 10% of the mean")
	maxGoroutineGrowth := fs.Float64("max-goroutine-growth", 50, "fail when the fitted goroutine growth over the post-warm-up window exceeds this and 10% of the mean")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var rates []float64
	for _, f := range strings.Split(*schedule, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v < 0 || v > 1 {
			return fmt.Errorf("--busy: %q is not a rate in [0, 1]", f)
		}
		rates = append(rates, v)
	}
	if *warm == 0 {
		*warm = *dur / 5
	}

	var fakes []*fake
	defer func() {
		for _, f := range fakes {
			f.stop()
		}
	}()
	base := fakellm.Settings{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}
	for _, b := range []struct{ name, region string }{{"east-a", "east"}, {"east-b", "east"}, {"west-a", "west"}, {"fallback", "fallback"}} {
		f, err := startFake(fakellm.Config{Name: b.name, Region: b.region, Settings: base}, false)
		if err != nil {
			return err
		}
		fakes = append(fakes, f)
	}
	cfg := fmt.Sprintf(`regions:
  - name: east
    backends:
      - {name: east-a, endpoint: %q}
      - {name: east-b, endpoint: %q}
  - name: west
    priority: 1
    backends:
      - {name: west-a, endpoint: %q}
fallbacks:
  - {name: fallback, endpoint: %q}
retry:
  attempt_timeout: 2s
`, fakes[0].openaiEndpoint(), fakes[1].openaiEndpoint(), fakes[2].openaiEndpoint(), fakes[3].openaiEndpoint())
	dt, err := startDetour(cfg, "east", true)
	if err != nil {
		return err
	}
	defer dt.stop()
	conn, err := dial(dt.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	call := unaryCall(detourv1.NewRouterClient(conn), request("hello, how are you today?"), 10*time.Second)
	if err := call(ctx); err != nil {
		return fmt.Errorf("first call: %w", err)
	}
	// Live counts for the samples; the load's own record is exact.
	var calls, failed atomicCounter
	counted := func(ctx context.Context) error {
		err := call(ctx)
		calls.add()
		if err != nil {
			failed.add()
		}
		return err
	}

	setBusy := func(v float64) error {
		for _, f := range fakes[:2] {
			if err := f.control(map[string]any{"busy_rate": v}); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setBusy(rates[0]); err != nil {
		return err
	}
	mark := markCPU()
	loadDone := make(chan *run, 1)
	began := time.Now()
	go func() { loadDone <- openLoop(ctx, *rate, *dur, 20000, nil, counted) }()

	metrics := dt.metrics != ""
	var samples []soakSample
	read := func(busy float64) {
		p := dt.proc()
		s := soakSample{at: time.Since(began), busy: busy, calls: calls.get(), failed: failed.get(), rss: p.RSS, threads: p.Threads, goroutines: -1, heap: -1}
		if metrics {
			if g, h, err := dt.metricsSample(ctx); err == nil {
				s.goroutines, s.heap = g, h
			} else {
				fmt.Fprintln(stderr, "soak: /metrics:", err)
			}
		}
		samples = append(samples, s)
		fmt.Fprintf(stderr, "soak %6s busy %.2f calls %d failed %d rss %s MiB threads %d goroutines %.0f heap %.1f MiB\n",
			s.at.Round(time.Second), busy, s.calls, s.failed, mib(s.rss), s.threads, s.goroutines, s.heap/(1<<20))
	}
	// Heap in use rises and falls with every GC cycle (detour keeps a 16 MiB
	// heap-goal floor, so a cycle is seconds long at this load): a sample
	// every few seconds would fit a slope to where in the cycle each one
	// fell. The heap is read every 250 ms instead and each row keeps the
	// lowest reading since the last: the troughs follow the live heap.
	heapMin := -1.0
	heapTick := time.NewTicker(250 * time.Millisecond)
	defer heapTick.Stop()
	sampleTick := time.NewTicker(*sampleEvery)
	defer sampleTick.Stop()
	changeTick := time.NewTicker(*every)
	defer changeTick.Stop()
	cur, idx := rates[0], 0
	read(cur)
	var r *run
wait:
	for {
		select {
		case r = <-loadDone:
			break wait
		case <-heapTick.C:
			if metrics {
				if _, h, err := dt.metricsSample(ctx); err == nil && (heapMin < 0 || h < heapMin) {
					heapMin = h
				}
			}
		case <-sampleTick.C:
			read(cur)
			if n := len(samples); n > 0 && heapMin >= 0 && heapMin < samples[n-1].heap {
				samples[n-1].heap = heapMin
			}
			heapMin = -1
		case <-changeTick.C:
			idx = (idx + 1) % len(rates)
			cur = rates[idx]
			if err := setBusy(cur); err != nil {
				return err
			}
		}
	}
	if len(samples) == 0 || time.Since(began)-samples[len(samples)-1].at > *sampleEvery/2 {
		read(cur)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	foreign := mark.foreignCPU()
	sum := summarize(r.Samples, r.Elapsed)
	if !dt.alive() {
		return fmt.Errorf("detour exited during the soak: %v\n%s", dt.err(), dt.tailText())
	}

	fmt.Printf("### Soak\n\n%s; load %s; other processes used %.2f cores on average; %.0f calls/s offered (open loop) for %v; east-a and east-b busy rate cycling %s every %v; west-a and a fallback healthy; samples every %v, trend fitted after %v.",
		machine(), loadavg(), foreign, *rate, *dur, *schedule, *every, *sampleEvery, *warm)
	if !metrics {
		fmt.Printf(" `detour serve` has no --metrics yet: goroutines and heap are not sampled (only /proc: RSS, threads).")
	}
	fmt.Println()
	fmt.Println()
	var rows [][]string
	for _, s := range samples {
		g, h := "-", "-"
		if s.goroutines >= 0 {
			g, h = fmt.Sprintf("%.0f", s.goroutines), fmt.Sprintf("%.1f", s.heap/(1<<20))
		}
		rows = append(rows, []string{s.at.Round(time.Second).String(), fmt.Sprintf("%.2f", s.busy), fmt.Sprint(s.calls), fmt.Sprint(s.failed), mib(s.rss), fmt.Sprint(s.threads), g, h})
	}
	fmt.Println(mdTable([]string{"t", "east busy rate", "calls", "failed", "RSS MiB", "threads", "goroutines", "heap in use MiB (lowest since the last row)"}, rows))

	var post []soakSample
	for _, s := range samples {
		if s.at >= *warm {
			post = append(post, s)
		}
	}
	var why []string
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
		slope := leastSquares(xs, ys)
		span := xs[len(xs)-1] - xs[0]
		growth := slope * span
		v := "flat"
		if growth > absMax && growth > 0.1*mean {
			v = "**RISING**"
			why = append(why, fmt.Sprintf("%s rises %.2f %s/min", name, slope, unit))
		}
		return fmt.Sprintf("%s: slope %+.3f %s/min (fitted change %+.2f %s over %.1f min, mean %.1f %s): %s", name, slope, unit, growth, unit, span, mean, unit, v)
	}
	lines := []string{trend("RSS", "MiB", func(s soakSample) float64 { return float64(s.rss) / (1 << 20) }, *maxRSSGrowth)}
	if metrics {
		lines = append(lines,
			trend("goroutines", "", func(s soakSample) float64 { return s.goroutines }, *maxGoroutineGrowth),
			trend("heap in use", "MiB", func(s soakSample) float64 { return s.heap / (1 << 20) }, *maxRSSGrowth))
	} else {
		lines = append(lines, trend("threads", "", func(s soakSample) float64 { return float64(s.threads) }, 4))
	}
	if sum.OK != sum.N {
		why = append(why, fmt.Sprintf("%d of %d calls failed (%s); west and the fallback were healthy, so the policy should have absorbed every busy answer", sum.N-sum.OK, sum.N, sum.codesText()))
	}
	fmt.Printf("Calls: %d, OK %d (%s), p50 %s ms, p99 %s ms, max %s ms; errors: %s.\n\n", sum.N, sum.OK, pctText(sum.successRate()), ms(sum.P50), ms(sum.P99), ms(sum.Max), sum.codesText())
	for _, l := range lines {
		fmt.Printf("- %s\n", l)
	}
	v := "pass"
	if len(why) > 0 {
		v = "FAIL: " + strings.Join(why, "; ")
	}
	fmt.Printf("\nVerdict: %s\n\n", v)
	if len(why) > 0 {
		return missed("%s", strings.Join(why, "; "))
	}
	return nil
}

// leastSquares returns the slope of the least-squares line through (xs, ys).
func leastSquares(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}
