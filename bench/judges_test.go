package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/bench/internal/load"
)

// The pass/fail judges of soak, seq, hop, cachehit, propagation,
// sharedstate and hostile, each shown to pass and to fail (busy's, chaos's,
// http's and jobs's are in busy_test.go, chaos_test.go, http_test.go and
// jobs_test.go).

// checkJudged compares what a scenario's judge returned with what a case
// wants: the error wantErr when it is set, else no error and the misses
// want.
func checkJudged(t *testing.T, misses []string, err error, want []string, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || err.Error() != wantErr {
			t.Fatalf("judge() error %v, want %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(misses, want); diff != "" {
		t.Errorf("misses (-got +want):\n%s", diff)
	}
}

// soakSamples are one per 10 s for 10 min, RSS growing by rssPerMin MiB a
// minute from 40 MiB, goroutines by gorPerMin.
func soakSamples(rssPerMin, gorPerMin float64) []soakSample {
	var out []soakSample
	for i := range 61 {
		at := time.Duration(i) * 10 * time.Second
		m := at.Minutes()
		out = append(out, soakSample{at: at, rss: int64((40 + rssPerMin*m) * (1 << 20)), goroutines: 90 + gorPerMin*m, heap: 8 << 20, threads: 8})
	}
	return out
}

func TestSoakJudge(t *testing.T) {
	ok := summary(1000, 1000, 20*time.Millisecond, 30*time.Millisecond)
	tests := []struct {
		name    string
		samples []soakSample
		metrics bool
		sum     load.Summary
		want    []string
	}{
		{name: "flat", samples: soakSamples(0, 0), metrics: true, sum: ok},
		{name: "RSS grows 1 MiB/min: 8 MiB over the 8 min after warm-up", samples: soakSamples(1, 0), metrics: true, sum: ok,
			want: []string{"RSS rises 1.00 MiB/min"}},
		{name: "goroutines grow 10/min", samples: soakSamples(0, 10), metrics: true, sum: ok,
			want: []string{"goroutines rises 10.00 /min"}},
		{name: "a slow RSS drift under the bound", samples: soakSamples(0.3, 0), metrics: true, sum: ok},
		{name: "failed calls", samples: soakSamples(0, 0), metrics: false, sum: summary(1000, 998, 0, 0),
			want: []string{"2 of 1000 calls failed (Unavailable 2); west and the fallback were healthy, so the policy should have absorbed every busy answer"}},
		{name: "too few samples to fit a trend", samples: soakSamples(5, 0)[:3], metrics: true, sum: ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := soakJudge(tt.samples, 2*time.Minute, tt.metrics, tt.sum, 4, 50)
			if diff := cmp.Diff(v.why, tt.want); diff != "" {
				t.Errorf("misses (-got +want):\n%s\nlines: %q", diff, v.lines)
			}
			wantLines := 3
			if !tt.metrics {
				wantLines = 2 // RSS and threads
			}
			if len(v.lines) != wantLines {
				t.Errorf("%d trend lines, want %d: %q", len(v.lines), wantLines, v.lines)
			}
		})
	}
}

func TestSeqJudge(t *testing.T) {
	direct := summary(100, 100, 100*time.Microsecond, time.Millisecond)
	tests := []struct {
		name   string
		routed load.Summary
		direct load.Summary
		want   []string
	}{
		{name: "within the target", direct: direct, routed: summary(100, 100, 240*time.Microsecond, time.Millisecond)},
		{name: "over the target", direct: direct, routed: summary(100, 100, 300*time.Microsecond, time.Millisecond),
			want: []string{"added p50 0.200 ms over the 0.150 ms target"}},
		{name: "failed calls", direct: direct, routed: summary(100, 99, 100*time.Microsecond, time.Millisecond),
			want: []string{"calls failed: direct -, routed Unavailable 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(seqJudge(tt.direct, tt.routed, 150*time.Microsecond), tt.want); diff != "" {
				t.Errorf("misses (-got +want):\n%s", diff)
			}
		})
	}
}

func TestHopJudge(t *testing.T) {
	agg := func(tp float64, p99 time.Duration) hopAgg { return hopAgg{throughput: tp, p99: p99} }
	// direct, proxy, detour
	good := []hopAgg{agg(20000, 5*time.Millisecond), agg(10000, 9*time.Millisecond), agg(10000, 9*time.Millisecond)}
	if misses, err := hopJudge(good, good); err != nil || len(misses) != 0 {
		t.Errorf("at the proxy's throughput and p99: %v, %v", misses, err)
	}
	slow := []hopAgg{agg(20000, 5*time.Millisecond), agg(10000, 9*time.Millisecond), agg(8000, 12*time.Millisecond)}
	misses, _ := hopJudge(slow, good)
	if diff := cmp.Diff(misses, []string{"3 of 4 hop targets"}); diff != "" {
		t.Errorf("misses (-got +want):\n%s", diff)
	}
	var failed []string
	for _, c := range hopChecks(slow, good) {
		if !c.ok() {
			failed = append(failed, c.what)
		}
	}
	want := []string{"closed: detour / proxy throughput", "closed: detour / proxy p99", "closed: detour / direct throughput"}
	if diff := cmp.Diff(failed, want); diff != "" {
		t.Errorf("failed checks (-got +want):\n%s", diff)
	}
	a := aggregate([]hopResult{
		{sum: load.Summary{N: 10, Throughput: 100}, hopCPU: 100 * time.Microsecond, samples: []load.Sample{{Lat: time.Millisecond}}},
		{sum: load.Summary{N: 10, Throughput: 300}, hopCPU: 300 * time.Microsecond, samples: []load.Sample{{Lat: 3 * time.Millisecond}}},
		{sum: load.Summary{N: 10, Throughput: 200}, hopCPU: 200 * time.Microsecond, samples: []load.Sample{{Lat: 2 * time.Millisecond}}},
	})
	if a.throughput != 200 || a.hopCPUPerCall != 20 || a.p99 != 3*time.Millisecond || a.errors != "0" {
		t.Errorf("aggregate: %+v, want the medians over the rounds and the pooled p99", a)
	}
}

func TestCacheHitJudge(t *testing.T) {
	if misses, err := cacheHitJudge(20000, 19000, 0); err != nil || len(misses) != 0 {
		t.Errorf("0.95 of the constant server: %v, %v", misses, err)
	}
	misses, err := cacheHitJudge(20000, 17000, 0)
	if diff := cmp.Diff(misses, []string{"detour cache hit reached 0.85 of the constant server's throughput (target 0.90)"}); err != nil || diff != "" {
		t.Errorf("0.85: %v (-got +want):\n%s", err, diff)
	}
	if _, err := cacheHitJudge(20000, 19000, 3); err == nil || !strings.Contains(err.Error(), "not every call was a hit") {
		t.Errorf("upstream requests: err = %v, want the run to be unusable", err)
	}
}

func TestPropagationJudge(t *testing.T) {
	during := summary(500, 500, 7*time.Millisecond, 10*time.Millisecond)
	if misses := propagationJudge(5*time.Millisecond, 100*time.Millisecond, during); len(misses) != 0 {
		t.Errorf("within the target: %v", misses)
	}
	want := []string{"p99 propagation 150.0 ms > 100.0 ms", "2 calls failed during the edits: Unavailable 2"}
	if diff := cmp.Diff(propagationJudge(150*time.Millisecond, 100*time.Millisecond, summary(500, 498, 0, 0)), want); diff != "" {
		t.Errorf("misses (-got +want):\n%s", diff)
	}
	q := []propEdit{{all: 3 * time.Millisecond}, {all: time.Millisecond}, {all: 2 * time.Millisecond}}
	p50, _, p99, mx := propQuantiles(q, func(e propEdit) time.Duration { return e.all })
	if p50 != 2*time.Millisecond || p99 != 3*time.Millisecond || mx != 3*time.Millisecond {
		t.Errorf("quantiles p50 %v p99 %v max %v", p50, p99, mx)
	}
}

func TestSharedStateJudge(t *testing.T) {
	ok := ssAgg{s: summary(1000, 1000, 0, 0), roundTrips: 90}
	if misses, err := sharedStateJudge(ok, ok, false, 5000); err != nil || len(misses) != 0 {
		t.Errorf("both fault-free, Redis used: %v, %v", misses, err)
	}
	failing := ssAgg{s: summary(1000, 990, 0, 0), roundTrips: 90}
	misses, err := sharedStateJudge(ok, failing, false, 5000)
	if diff := cmp.Diff(misses, []string{"(b) with Redis: 99.00% OK (Unavailable 10)"}); err != nil || diff != "" {
		t.Errorf("(b) failing: %v (-got +want):\n%s", err, diff)
	}
	_, err = sharedStateJudge(failing, ssAgg{s: ok.s}, false, 5000)
	if err == nil || !strings.Contains(err.Error(), "(a) without Redis was not fault-free at 5000 calls/s") || !strings.Contains(err.Error(), "(b) sent Redis no command") {
		t.Errorf("unusable run: err = %v", err)
	}
	if _, err := sharedStateJudge(ok, ssAgg{s: ok.s}, true, 5000); err != nil {
		t.Errorf("A/A control without Redis commands: %v", err)
	}
	a := ssAggregate([]ssResult{
		{samples: []load.Sample{{}, {}}, cmds: map[string]int64{"evalsha": 2, "get": 2}, detourCPU: 40 * time.Microsecond},
		{samples: []load.Sample{{}, {}}, cmds: map[string]int64{"evalsha": 1, "ping": 1}, detourCPU: 40 * time.Microsecond},
	})
	if a.calls != 4 || a.total != 6 || a.roundTrips != 4 || a.detour != 20 {
		t.Errorf("aggregate: calls %d, commands %d, round trips %d (scripts' inner commands left out), detour %v µs/call", a.calls, a.total, a.roundTrips, a.detour)
	}
}

func TestHostileJudge(t *testing.T) {
	c := hostileCase{name: "huge bodies", boundMiB: 256}
	if fails := hostileJudge(c, &hostileRun{peakRSS: 150 << 20}); len(fails) != 0 {
		t.Errorf("under the bound: %v", fails)
	}
	r := &hostileRun{peakRSS: 300 << 20, fails: []string{"detour died"}}
	if diff := cmp.Diff(hostileJudge(c, r), []string{"detour died", "peak RSS 300.0 MiB > 256 MiB"}); diff != "" {
		t.Errorf("fails (-got +want):\n%s", diff)
	}
	if len(r.fails) != 1 {
		t.Error("hostileJudge changed the run's own record")
	}
	h := &hostileScenario{cases: []hostileCase{c, {name: "endless", boundMiB: 64}}, runs: []*hostileRun{r, {peakRSS: 40 << 20}}}
	misses, err := h.judge()
	if diff := cmp.Diff(misses, []string{"1 of 2 hostile cases failed"}); err != nil || diff != "" {
		t.Errorf("judge() = %v (-got +want):\n%s", err, diff)
	}
	var out strings.Builder
	h.report(&out)
	if !strings.Contains(out.String(), "**FAIL**: detour died; peak RSS 300.0 MiB > 256 MiB") || !strings.Contains(out.String(), "| endless |") {
		t.Errorf("report:\n%s", out.String())
	}
}

// fakeScenario records the steps main ran.
type fakeScenario struct {
	steps            []string
	setupErr, runErr error
	misses           []string
	judgeErr         error
}

func (f *fakeScenario) flags(fs *flag.FlagSet) { f.steps = append(f.steps, "flags") }
func (f *fakeScenario) setup(context.Context) (func(), error) {
	f.steps = append(f.steps, "setup")
	return func() { f.steps = append(f.steps, "stop") }, f.setupErr
}
func (f *fakeScenario) run(context.Context) error { f.steps = append(f.steps, "run"); return f.runErr }
func (f *fakeScenario) judge() ([]string, error) {
	f.steps = append(f.steps, "judge")
	return f.misses, f.judgeErr
}
func (f *fakeScenario) report(w io.Writer) {
	f.steps = append(f.steps, "report")
	io.WriteString(w, "table\n")
}

func TestRunScenario(t *testing.T) {
	failed := errors.New("could not")
	tests := []struct {
		name      string
		s         *fakeScenario
		wantSteps string
		wantMiss  bool
		wantErr   error
	}{
		{name: "pass", s: &fakeScenario{}, wantSteps: "flags setup run judge report stop"},
		{name: "miss", s: &fakeScenario{misses: []string{"a", "b"}}, wantSteps: "flags setup run judge report stop", wantMiss: true},
		{name: "measured nothing: reported, then exit 1", s: &fakeScenario{judgeErr: failed}, wantSteps: "flags setup run judge report stop", wantErr: failed},
		{name: "setup failed: what it started is stopped", s: &fakeScenario{setupErr: failed}, wantSteps: "flags setup stop", wantErr: failed},
		{name: "run failed: no report", s: &fakeScenario{runErr: failed}, wantSteps: "flags setup run stop", wantErr: failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := runScenario(context.Background(), "fake", tt.s, nil, &out)
			if got := strings.Join(tt.s.steps, " "); got != tt.wantSteps {
				t.Errorf("steps %q, want %q", got, tt.wantSteps)
			}
			if errors.Is(err, errMiss) != tt.wantMiss {
				t.Errorf("err = %v, want a MISS: %v", err, tt.wantMiss)
			}
			if tt.wantMiss && !strings.Contains(err.Error(), "MISS: a; b") {
				t.Errorf("err = %v, want the misses joined", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !tt.wantMiss && err != nil {
				t.Errorf("err = %v, want nil", err)
			}
		})
	}
}
