package main

import (
	"strings"
	"testing"
	"time"

	"github.com/detour-dev/detour/bench/internal/load"
)

// httpRec is a bench http record: direct at 100 µs p50 and 200 µs p99, the
// reverse proxy at +50 µs, the HTTP face and the gRPC face at the added
// latencies given, every call answered; throughput in calls/s per round.
func httpRec(face50, face99, grpc50 time.Duration, proxyTput, faceTput float64, rssMiB int64) httpRecord {
	d50, d99 := 100*time.Microsecond, 200*time.Microsecond
	return httpRecord{
		names: []string{"direct", "proxy", "HTTP face", "gRPC face"},
		seq: []load.Summary{
			summary(1000, 1000, d50, d99),
			summary(1000, 1000, d50+50*time.Microsecond, d99+50*time.Microsecond),
			summary(1000, 1000, d50+face50, d99+face99),
			summary(1000, 1000, d50+grpc50, d99+grpc50),
		},
		tput:      [][]float64{{20000, 21000, 19000}, {proxyTput, proxyTput}, {faceTput, faceTput}, {15000}},
		cpu:       [][]float64{nil, {40}, {60}, {55}},
		hwm:       []int64{0, 12 << 20, rssMiB << 20, rssMiB << 20},
		detourHWM: rssMiB << 20,
	}
}

var httpTestBounds = httpBounds{p50: 100 * time.Microsecond, p99: 500 * time.Microsecond, grpcP50: 150 * time.Microsecond, ratio: 0.9, rssMiB: 50}

func TestHTTPJudge(t *testing.T) {
	tests := []struct {
		name    string
		rec     httpRecord
		want    []string
		wantErr string
	}{
		{name: "every target met", rec: httpRec(90*time.Microsecond, 400*time.Microsecond, 140*time.Microsecond, 10000, 9500, 40)},
		{name: "bounds are inclusive", rec: httpRec(100*time.Microsecond, 500*time.Microsecond, 150*time.Microsecond, 10000, 9000, 50)},
		{name: "every target missed", rec: httpRec(310*time.Microsecond, 630*time.Microsecond, 250*time.Microsecond, 10000, 8000, 55),
			want: []string{
				"HTTP face: added p50 0.310 ms, want <= 0.100 ms",
				"HTTP face: added p99 0.630 ms, want <= 0.500 ms",
				"HTTP face: throughput / reverse proxy's 0.80, want >= 0.90",
				"detour RSS peak 55.0 MiB, want <= 50 MiB",
				"gRPC face: added p50 0.250 ms, want <= 0.150 ms",
			}},
		{name: "failed sequential calls are a miss", rec: func() httpRecord {
			r := httpRec(90*time.Microsecond, 400*time.Microsecond, 140*time.Microsecond, 10000, 9500, 40)
			r.seq[httpFaceT] = summary(1000, 998, 190*time.Microsecond, 500*time.Microsecond)
			return r
		}(), want: []string{"HTTP face: sequential calls failed: Unavailable 2"}},
		{name: "a path not measured is an error", rec: func() httpRecord {
			r := httpRec(0, 0, 0, 1, 1, 1)
			r.tput[httpProxy] = nil
			return r
		}(), wantErr: "proxy: nothing measured"},
		{name: "an empty record is an error", rec: httpRecord{}, wantErr: "measured 0 of 4 paths"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &httpFace{rec: tt.rec, bounds: httpTestBounds}
			misses, err := h.judge()
			checkJudged(t, misses, err, tt.want, tt.wantErr)
		})
	}
}

func TestHTTPReport(t *testing.T) {
	h := &httpFace{calls: 1000, block: 500, warm: 10, conc: 32, dur: time.Second, rounds: 2, bounds: httpTestBounds,
		rec: httpRec(310*time.Microsecond, 400*time.Microsecond, 140*time.Microsecond, 10000, 9500, 40)}
	var out strings.Builder
	h.report(&out)
	for _, s := range []string{
		"| HTTP face | 0.410 | 0.600 | 0.310 | 0.400 | 9500 | 60.0 | 40.0 | - |",
		"| direct | 0.100 | 0.200 | - | - | 20000 | - | - | - |",
		"| HTTP face: added p50 | 0.310 ms | <= 0.100 ms | MISS |",
		"| HTTP face: throughput / reverse proxy's | 0.95 | >= 0.90 | pass |",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
	var empty strings.Builder
	(&httpFace{}).report(&empty)
	if !strings.Contains(empty.String(), "No verdict: measured 0 of 4 paths") {
		t.Errorf("report of an empty record:\n%s", empty.String())
	}
}
