package load

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// latencies are samples of 1..n ms, OK.
func latencies(n int) []Sample {
	ss := make([]Sample, n)
	for i := range ss {
		ss[i] = Sample{Start: ms(i), Lat: ms(i + 1), Code: codes.OK}
	}
	return ss
}

func TestPct(t *testing.T) {
	sorted := make([]time.Duration, 1000)
	for i := range sorted {
		sorted[i] = ms(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{name: "none", sorted: nil, q: 0.5, want: 0},
		{name: "one", sorted: []time.Duration{ms(7)}, q: 0.99, want: ms(7)},
		{name: "p50 of 1000 is the 500th", sorted: sorted, q: 0.5, want: ms(500)},
		{name: "p99 of 1000 is the 990th", sorted: sorted, q: 0.99, want: ms(990)},
		{name: "p99.9 of 1000 is the 999th", sorted: sorted, q: 0.999, want: ms(999)},
		{name: "max", sorted: sorted, q: 1, want: ms(1000)},
		{name: "q 0 is the least", sorted: sorted, q: 0, want: ms(1)},
		{name: "p50 of 4 by nearest rank is the 2nd", sorted: []time.Duration{ms(1), ms(2), ms(3), ms(4)}, q: 0.5, want: ms(2)},
		{name: "p99 of 10 is the largest", sorted: sorted[:10], q: 0.99, want: ms(10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Pct(tt.sorted, tt.q); got != tt.want {
				t.Errorf("Pct(q=%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	ss := latencies(100)
	// Five failures of two kinds, and three calls the generator never sent
	// (their latency, zero, must not pull the percentiles down).
	ss[10].Code, ss[11].Code, ss[12].Code = codes.Unavailable, codes.Unavailable, codes.Unavailable
	ss[20].Code, ss[21].Code = codes.ResourceExhausted, codes.ResourceExhausted
	ss = append(ss, Sample{Code: CodeGenOverload}, Sample{Code: CodeGenOverload}, Sample{Code: CodeGenOverload})
	s := Summarize(ss, 2*time.Second)
	got := []any{s.N, s.OK, s.Codes[codes.Unavailable], s.Codes[CodeGenOverload], s.P50, s.P99, s.P999, s.Max, s.Throughput, s.SuccessRate()}
	want := []any{103, 95, 3, 3, ms(50), ms(99), ms(100), ms(100), 47.5, 95.0 / 103}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("summary (-got +want):\n%s", diff)
	}
	if got, want := s.CodesText(), "Unavailable 3, generator-overload 3, ResourceExhausted 2"; got != want {
		t.Errorf("CodesText() = %q, want %q", got, want)
	}
	if s := Summarize(ss, 0); s.Throughput != 0 {
		t.Errorf("Throughput without a run length = %v, want 0", s.Throughput)
	}
}

func TestSuccessRateAndCodesText(t *testing.T) {
	tests := []struct {
		name      string
		codes     []codes.Code
		wantRate  float64
		wantCodes string
	}{
		{name: "no calls", wantRate: 0, wantCodes: "-"},
		{name: "all OK", codes: []codes.Code{codes.OK, codes.OK}, wantRate: 1, wantCodes: "-"},
		{name: "truncated streams are named", codes: []codes.Code{codes.OK, CodeTruncated, CodeTruncated, codes.OK}, wantRate: 0.5, wantCodes: "TRUNCATED-OK 2"},
		{name: "ties by name", codes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.OK, codes.OK}, wantRate: 0.5, wantCodes: "DeadlineExceeded 1, Unavailable 1"},
		{name: "none OK", codes: []codes.Code{codes.Internal}, wantRate: 0, wantCodes: "Internal 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ss []Sample
			for _, c := range tt.codes {
				ss = append(ss, Sample{Code: c})
			}
			s := Summarize(ss, 0)
			if got := s.SuccessRate(); got != tt.wantRate {
				t.Errorf("SuccessRate() = %v, want %v", got, tt.wantRate)
			}
			if got := s.CodesText(); got != tt.wantCodes {
				t.Errorf("CodesText() = %q, want %q", got, tt.wantCodes)
			}
		})
	}
}

func TestWindowAndPctOf(t *testing.T) {
	ss := latencies(10) // starts 0..9 ms, latencies 1..10 ms
	w := Window(ss, ms(2), ms(5))
	var starts []time.Duration
	for _, s := range w {
		starts = append(starts, s.Start)
	}
	if diff := cmp.Diff(starts, []time.Duration{ms(2), ms(3), ms(4)}); diff != "" {
		t.Errorf("Window [2ms, 5ms) starts (-got +want):\n%s", diff)
	}
	if got := PctOf(ss, 0.9); got != ms(9) {
		t.Errorf("PctOf(0.9) = %v, want 9ms", got)
	}
	if got := w[0].End(); got != ms(5) {
		t.Errorf("End() = %v, want start 2ms + latency 3ms", got)
	}
}

func TestMedianAndSlope(t *testing.T) {
	v := []float64{5, 1, 3}
	if got := Median(v); got != 3 {
		t.Errorf("Median odd = %v, want 3", got)
	}
	if v[0] != 5 {
		t.Error("Median sorted its argument")
	}
	if got := Median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("Median even = %v, want 2.5", got)
	}
	if got := Median(nil); got != 0 {
		t.Errorf("Median(nil) = %v, want 0", got)
	}
	if got := Slope([]float64{0, 1, 2, 3}, []float64{1, 3, 5, 7}); got != 2 {
		t.Errorf("Slope of y = 2x+1 = %v, want 2", got)
	}
	if got := Slope([]float64{1, 1}, []float64{1, 5}); got != 0 {
		t.Errorf("Slope with constant x = %v, want 0", got)
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{status.Error(codes.Unavailable, "busy"), codes.Unavailable},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{ErrTruncated, CodeTruncated},
		{errors.New("plain"), codes.Unknown},
	}
	for _, tt := range tests {
		if got := CodeOf(tt.err); got != tt.want {
			t.Errorf("CodeOf(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestLoops(t *testing.T) {
	ctx := context.Background()
	fail := status.Error(codes.Unavailable, "busy")
	n := 0
	r := ClosedLoop(ctx, 1, time.Minute, 10, func(context.Context) error {
		n++
		if n%2 == 0 {
			return fail
		}
		return nil
	})
	if s := Summarize(r.Samples, r.Elapsed); s.N != 10 || s.OK != 5 || s.Codes[codes.Unavailable] != 5 {
		t.Errorf("closed loop of 10 calls, every second failing: %+v", s)
	}
	// An open loop at 1000/s for 100 ms with at most one call in flight,
	// each taking 20 ms: most due calls are never sent, and say so.
	block := make(chan struct{})
	r = OpenLoop(ctx, 1000, 100*time.Millisecond, 1, nil, func(ctx context.Context) error {
		select {
		case <-block:
		case <-time.After(20 * time.Millisecond):
		}
		return nil
	})
	s := Summarize(r.Samples, r.Elapsed)
	if s.Codes[CodeGenOverload] == 0 || s.Codes[CodeGenOverload] != r.Skipped || s.OK == 0 || s.N > 116 {
		t.Errorf("open loop beyond its in-flight bound: %+v, skipped %d", s, r.Skipped)
	}
}

func TestAlternate(t *testing.T) {
	var order []int
	if err := Alternate(context.Background(), 3, 2, func(round, i int) error {
		order = append(order, i)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(order, []int{0, 1, 1, 0, 0, 1}); diff != "" {
		t.Errorf("order (-got +want):\n%s", diff)
	}
	stop := errors.New("stop")
	if err := Alternate(context.Background(), 3, 2, func(round, i int) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Alternate = %v, want the measure's error", err)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
