package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/internal/fakellm"
)

// chaosCase returns the named case of chaosCases.
func chaosCaseNamed(t *testing.T, name string) chaosCase {
	t.Helper()
	for _, c := range append(chaosCases(), chaosStateCases()...) {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no chaos case %q", name)
	return chaosCase{}
}

// codesRun is a chaos run whose calls ended with codes, every 5 ms.
func codesRun(amp float64, cs ...codes.Code) *chaosRun {
	r := &chaosRun{run: &load.Run{}, amp: amp, detourOK: true}
	for i, c := range cs {
		s := load.Sample{Start: time.Duration(i) * 5 * time.Millisecond, Lat: 20 * time.Millisecond, Code: c}
		if c != codes.OK {
			s.Err = status.Error(c, "x")
		}
		r.run.Samples = append(r.run.Samples, s)
	}
	r.sum = load.Summarize(r.run.Samples, 0)
	return r
}

func oks(n int) []codes.Code {
	cs := make([]codes.Code, n)
	for i := range cs {
		cs[i] = codes.OK
	}
	return cs
}

func TestChaosCaseJudges(t *testing.T) {
	o := chaosOpts{maxAmp: 1.5, rate: 200, faultAt: 2 * time.Second, dur: 8 * time.Second}
	died := codesRun(1, oks(10)...)
	died.detourOK = false
	tests := []struct {
		name, caseName string
		r              *chaosRun
		want           string
	}{
		{name: "baseline passes", caseName: "baseline", r: codesRun(1, oks(10)...)},
		{name: "baseline fails on one failure and any retry", caseName: "baseline", r: codesRun(1.02, append(oks(9), codes.Unavailable)...),
			want: "success < 100%; amplification > 1.01"},
		{name: "resets pass at 99.9% and 1.5 upstream calls", caseName: "resets", r: codesRun(1.5, append(oks(999), codes.Unavailable)...)},
		{name: "resets fail below 99.9% and over the amplification bound", caseName: "resets", r: codesRun(1.6, append(oks(99), codes.Unavailable)...),
			want: "success < 99.900%; amplification > 1.5"},
		{name: "latency fails when slow answers were retried", caseName: "latency", r: codesRun(1.06, oks(10)...),
			want: "slow answers were retried (amplification > 1.05)"},
		{name: "hang fails when detour died", caseName: "hang", r: died, want: "detour died"},
		{name: "cut mid-stream passes with UNAVAILABLE", caseName: "cut mid-stream", r: codesRun(1, append(oks(9), codes.Unavailable)...)},
		{name: "cut mid-stream fails on a truncated OK", caseName: "cut mid-stream", r: codesRun(1, append(oks(9), load.CodeTruncated)...),
			want: "1 calls ended TRUNCATED-OK, want UNAVAILABLE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := chaosCaseNamed(t, tt.caseName).judge(o, tt.r)
			if got != tt.want {
				t.Errorf("fail = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestJudgeSigterm(t *testing.T) {
	refused := status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp: connect: connection refused\"")
	at := 100 * time.Millisecond
	sample := func(start time.Duration, err error) load.Sample {
		return load.Sample{Start: start, Lat: 300 * time.Millisecond, Code: load.CodeOf(err), Err: err}
	}
	pass := &chaosRun{detourOK: true, sigtermAt: at, upTotal: 3, run: &load.Run{Samples: []load.Sample{
		sample(10*time.Millisecond, nil), sample(90*time.Millisecond, nil), sample(200*time.Millisecond, nil), sample(300*time.Millisecond, refused)}}}
	if fail, note := judgeSigterm(chaosOpts{}, pass); fail != "" || !strings.Contains(note, "2 calls sent before SIGTERM (2 of them in flight at the signal)") || pass.success != "100% of accepted" {
		t.Errorf("clean shutdown: fail %q, note %q, success %q", fail, note, pass.success)
	}
	lost := &chaosRun{detourOK: false, exitNote: "exit status 1", sigtermAt: at,
		upstream: map[string]fakellm.Stats{"east-a": {Canceled: 2}},
		run: &load.Run{Samples: []load.Sample{
			sample(10*time.Millisecond, status.Error(codes.Unavailable, "server shutting down")),
			sample(200*time.Millisecond, status.Error(codes.Canceled, "grace cut")),
		}}}
	want := "2 accepted calls lost; 2 upstream calls abandoned; detour did not exit 0 within its grace: exit status 1"
	if fail, _ := judgeSigterm(chaosOpts{}, lost); fail != want {
		t.Errorf("lost calls: fail %q, want %q", fail, want)
	}
}

func shed(delay time.Duration) error {
	st := status.New(codes.ResourceExhausted, "detour: at its in-flight limit (32 calls); retry")
	if delay > 0 {
		st, _ = st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	}
	return st.Err()
}

func TestJudgeBurst(t *testing.T) {
	o := chaosOpts{rate: 200, faultAt: 2 * time.Second, dur: 8 * time.Second, maxInflight: 32}
	mk := func(samples ...load.Sample) *chaosRun {
		r := &chaosRun{detourOK: true, baseP99: 25 * time.Millisecond, run: &load.Run{Samples: samples}}
		r.recovery = load.Summarize(load.Window(samples, o.dur-2*time.Second, o.dur), 0)
		return r
	}
	ok := func(start time.Duration) load.Sample { return load.Sample{Start: start, Lat: 20 * time.Millisecond} }
	shedAt := func(start time.Duration, err error) load.Sample {
		return load.Sample{Start: start, Lat: time.Millisecond, Code: codes.ResourceExhausted, Err: err}
	}
	good := mk(ok(time.Second), ok(3*time.Second), shedAt(3*time.Second, shed(300*time.Millisecond)), ok(7*time.Second))
	if fail, _ := judgeBurst(o, good); fail != "" {
		t.Errorf("a burst shed with RetryInfo: fail %q", fail)
	}
	bad := mk(ok(time.Second), shedAt(time.Second, shed(300*time.Millisecond)), shedAt(3*time.Second, shed(0)),
		load.Sample{Start: 3 * time.Second, Lat: time.Second, Code: codes.DeadlineExceeded, Err: errors.New("deadline")},
		load.Sample{Start: 7 * time.Second, Lat: 500 * time.Millisecond, Code: codes.Unavailable, Err: status.Error(codes.Unavailable, "x")})
	fail, _ := judgeBurst(o, bad)
	for _, want := range []string{
		"calls ended DeadlineExceeded (only a shed RESOURCE_EXHAUSTED may fail)",
		"1 shed calls without a RetryInfo",
		"1 calls shed before the burst or after its admitted calls ended",
		"recovery phase success 0.00% < 100%",
		"recovery p99 500.0 ms > 100.0 ms",
	} {
		if !strings.Contains(fail, want) {
			t.Errorf("fail %q lacks %q", fail, want)
		}
	}
	// At 1000 calls/s the burst holds at least 200 calls against a limit
	// of 32: something must have been shed.
	if fail, _ := judgeBurst(chaosOpts{rate: 1000, faultAt: o.faultAt, dur: o.dur, maxInflight: 32}, mk(ok(3*time.Second))); !strings.Contains(fail, "nothing shed although the burst keeps at least 200 calls in flight") {
		t.Errorf("nothing shed at 10x: fail %q", fail)
	}
}

func TestStateJudges(t *testing.T) {
	clean := codesRun(1, oks(10)...)
	if fail, _ := judgeEtcdRestart(chaosOpts{}, clean, &etcdOutcome{stopped: time.Now(), lost: -1, reconnected: -1}); fail != "" {
		t.Errorf("etcd restart, edit applied: fail %q", fail)
	}
	fail, note := judgeEtcdRestart(chaosOpts{}, codesRun(1.02, append(oks(9), codes.Unavailable)...), &etcdOutcome{lost: -1, reconnected: -1, failure: "revision 7 not applied"})
	if want := "success < 100%; amplification > 1.01; the fault was never injected (the load ended first: --fault-at must be under --duration); revision 7 not applied"; fail != want {
		t.Errorf("etcd restart: fail %q, want %q", fail, want)
	}
	if !strings.Contains(note, "connection lost after not logged") {
		t.Errorf("etcd note %q", note)
	}
	if fail, _ := judgeRedisKill(chaosOpts{}, clean, &redisOutcome{before: 10}); fail != "" {
		t.Errorf("redis kill, used again: fail %q", fail)
	}
	slow := codesRun(1, oks(10)...)
	slow.sum.P99 = 150 * time.Millisecond
	fail, _ = judgeRedisKill(chaosOpts{}, slow, &redisOutcome{failure: "detour sent the restarted Redis nothing within 10s", probeFailed: 2})
	if want := "p99 150.0 ms > 100.0 ms; detour sent Redis no cache or limiter command before the kill: nothing was tested; detour sent the restarted Redis nothing within 10s; 2 calls after the load failed"; fail != want {
		t.Errorf("redis kill: fail %q, want %q", fail, want)
	}
}

func TestChaosJudgeCountsFailedCases(t *testing.T) {
	c := &chaos{
		cases:   []chaosCase{chaosCaseNamed(t, "baseline"), chaosCaseNamed(t, "resets"), chaosCaseNamed(t, "redis kill")},
		runs:    []*chaosRun{codesRun(1, oks(10)...), codesRun(2, oks(10)...), nil},
		skipped: []error{nil, nil, chaosSkipped("redis-server not found")},
	}
	c.o.maxAmp = 1.5
	misses, err := c.judge()
	if diff := cmp.Diff(misses, []string{"1 of 3 chaos cases failed their criterion"}); err != nil || diff != "" {
		t.Errorf("judge() = %v (-got +want):\n%s", err, diff)
	}
	var out strings.Builder
	c.report(&out)
	for _, s := range []string{"| baseline | none | 100% |", "**FAIL**: amplification > 1.5", "skipped: redis-server not found"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

func TestInflightLimit(t *testing.T) {
	for _, tt := range []struct {
		flag int
		rate float64
		want int
	}{{0, 200, 32}, {0, 1000, 160}, {-1, 200, 0}, {50, 200, 50}} {
		if got := inflightLimit(tt.flag, tt.rate); got != tt.want {
			t.Errorf("inflightLimit(%d, %v) = %d, want %d", tt.flag, tt.rate, got, tt.want)
		}
	}
}
