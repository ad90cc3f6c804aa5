package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("seq", "added latency of one call at a time: HTTP client -> fakellm vs gRPC client -> detour -> fakellm HTTP", func() scenario { return &seq{} })
}

// seq measures the latency detour adds to one call at a time: the same
// calls straight to fakellm over HTTP and through detour, interleaved in
// blocks, with gRPC straight to fakellm as a reference.
type seq struct {
	calls, block, warm int
	bound              time.Duration

	paths []seqPath

	// What run recorded, per path.
	res     [][]load.Sample
	elapsed []time.Duration
	foreign float64
}

type seqPath struct {
	name string
	fn   load.Call
}

func (s *seq) flags(fs *flag.FlagSet) {
	fs.IntVar(&s.calls, "calls", 10000, "measured calls per path")
	fs.IntVar(&s.block, "block", 500, "calls per path before switching to the other (interleaving evens out drift)")
	fs.IntVar(&s.warm, "warmup", 1000, "unmeasured calls per path first")
	fs.DurationVar(&s.bound, "target", 150*time.Microsecond, "target for the added p50")
}

func (s *seq) setup(ctx context.Context) (func(), error) {
	var st stack
	fk, err := harness.StartFake(fakellm.Config{Name: "seq", Region: "local"}, true)
	if err != nil {
		return st.stop, err
	}
	st.add(fk.Stop)
	doc, err := configYAML(seqConfig(fk.OpenAIEndpoint()))
	if err != nil {
		return st.stop, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: true})
	if err != nil {
		return st.stop, err
	}
	st.add(dt.Stop)
	conn, err := st.dial(dt.Addr)
	if err != nil {
		return st.stop, err
	}
	gconn, err := st.dial(fk.GRPC)
	if err != nil {
		return st.stop, err
	}
	s.paths = []seqPath{
		{"direct (HTTP client -> fakellm)", load.DirectHTTP(fk.HTTP, "hello, how are you today?", 5*time.Second)},
		{"routed (gRPC client -> detour -> fakellm HTTP)", load.Unary(detourv1.NewRouterClient(conn), load.Request("hello, how are you today?"), 5*time.Second)},
		{"reference: gRPC client -> fakellm gRPC", load.Unary(detourv1.NewRouterClient(gconn), load.Request("hello, how are you today?"), 5*time.Second)},
	}
	return st.stop, nil
}

func (s *seq) run(ctx context.Context) error {
	for _, p := range s.paths {
		for range s.warm {
			if err := p.fn(ctx); err != nil {
				return fmt.Errorf("%s warm-up: %w", p.name, err)
			}
		}
	}
	mark := harness.MarkCPU()
	s.res = make([][]load.Sample, len(s.paths))
	s.elapsed = make([]time.Duration, len(s.paths))
	for done := 0; done < s.calls && ctx.Err() == nil; done += s.block {
		n := min(s.block, s.calls-done)
		for i, p := range s.paths {
			r := load.ClosedLoop(ctx, 1, time.Hour, n, p.fn)
			s.res[i] = append(s.res[i], r.Samples...)
			s.elapsed[i] += r.Elapsed
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.foreign = mark.ForeignCPU()
	return nil
}

func (s *seq) sums() []load.Summary {
	sums := make([]load.Summary, len(s.res))
	for i := range s.res {
		sums[i] = load.Summarize(s.res[i], s.elapsed[i])
	}
	return sums
}

func (s *seq) judge() ([]string, error) {
	sums := s.sums()
	return seqJudge(sums[0], sums[1], s.bound), nil
}

// seqJudge: every call on both paths succeeded, and detour added at most
// bound to the p50.
func seqJudge(direct, routed load.Summary, bound time.Duration) []string {
	if direct.OK != direct.N || routed.OK != routed.N {
		return []string{fmt.Sprintf("calls failed: direct %s, routed %s", direct.CodesText(), routed.CodesText())}
	}
	if added := routed.P50 - direct.P50; added > bound {
		return []string{fmt.Sprintf("added p50 %s ms over the %s ms target", report.Ms(added), report.Ms(bound))}
	}
	return nil
}

func (s *seq) report(w io.Writer) {
	sums := s.sums()
	mean := func(ss []load.Sample) time.Duration {
		var t time.Duration
		for _, s := range ss {
			t += s.Lat
		}
		return t / time.Duration(max(len(ss), 1))
	}
	fmt.Fprintf(w, "### Sequential added latency\n\n%s; load %s; other processes used %.2f cores on average during the run; fakellm HTTP with zero latency; one call at a time, %d calls per path in blocks of %d, interleaved, after %d warm-up calls each.\n\n",
		report.Machine(), report.LoadAvg(), s.foreign, s.calls, s.block, s.warm)
	var rows [][]string
	for i, p := range s.paths[:2] {
		sm := sums[i]
		rows = append(rows, []string{p.name, report.Ms(sm.P50), report.Ms(load.PctOf(s.res[i], 0.90)), report.Ms(sm.P99), report.Ms(sm.P999), report.Ms(mean(s.res[i])), sm.CodesText()})
	}
	add := func(a, b time.Duration) string { return report.Ms(b - a) }
	rows = append(rows, []string{"**added by detour**",
		add(sums[0].P50, sums[1].P50), add(load.PctOf(s.res[0], 0.9), load.PctOf(s.res[1], 0.9)), add(sums[0].P99, sums[1].P99),
		add(sums[0].P999, sums[1].P999), add(mean(s.res[0]), mean(s.res[1])), ""})
	rows = append(rows, []string{s.paths[2].name + " (no detour: the cost of gRPC alone)", report.Ms(sums[2].P50), report.Ms(load.PctOf(s.res[2], 0.90)), report.Ms(sums[2].P99), report.Ms(sums[2].P999), report.Ms(mean(s.res[2])), sums[2].CodesText()})
	fmt.Fprintln(w, report.Table([]string{"path", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "mean ms", "errors"}, rows))
	added50, added99 := sums[1].P50-sums[0].P50, sums[1].P99-sums[0].P99
	fmt.Fprintf(w, "Target: added p50 <= %s ms: %s (%s ms); added p99 <= %s ms: %s (%s ms).\n\n",
		report.Ms(s.bound), report.Verdict(added50 <= s.bound), report.Ms(added50), report.Ms(s.bound), report.Verdict(added99 <= s.bound), report.Ms(added99))
}

// seqConfig routes to one openai backend with non-binding limits, a
// fallback, and the cache off.
func seqConfig(endpoint string) *regions.Config {
	return &regions.Config{
		Regions:   []regions.Region{region("local", 0, regions.Backend{Name: "fake-http", Endpoint: endpoint, QPS: 1000000, MaxConcurrency: 100000})},
		Fallbacks: []regions.Backend{{Name: "fallback-http", Endpoint: endpoint}},
		Limits:    regions.LimitPolicy{TenantQPS: 1000000},
		Cache:     regions.CachePolicy{Disabled: true},
	}
}
