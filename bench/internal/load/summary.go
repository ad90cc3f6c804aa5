package load

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// Summary is what reports print and judges read about a set of samples.
type Summary struct {
	N, OK          int
	Codes          map[codes.Code]int
	P50, P99, P999 time.Duration
	Max            time.Duration
	Throughput     float64 // OK calls per second of the run (0 when elapsed is 0)
}

// Summarize counts ss by code and takes the latency percentiles of the
// calls that were sent (not those recorded as CodeGenOverload). elapsed is
// the run's length for Throughput; 0 leaves it 0.
func Summarize(ss []Sample, elapsed time.Duration) Summary {
	s := Summary{N: len(ss), Codes: map[codes.Code]int{}}
	lat := make([]time.Duration, 0, len(ss))
	for _, x := range ss {
		s.Codes[x.Code]++
		if x.Code == codes.OK {
			s.OK++
		}
		if x.Code != CodeGenOverload {
			lat = append(lat, x.Lat)
		}
	}
	slices.Sort(lat)
	s.P50, s.P99, s.P999 = Pct(lat, 0.50), Pct(lat, 0.99), Pct(lat, 0.999)
	if len(lat) > 0 {
		s.Max = lat[len(lat)-1]
	}
	if elapsed > 0 {
		s.Throughput = float64(s.OK) / elapsed.Seconds()
	}
	return s
}

// Pct is the q quantile of sorted, by nearest rank (0 for none).
func Pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// PctOf is the q quantile of the latencies of ss, every sample counted.
func PctOf(ss []Sample, q float64) time.Duration {
	lat := make([]time.Duration, 0, len(ss))
	for _, x := range ss {
		lat = append(lat, x.Lat)
	}
	slices.Sort(lat)
	return Pct(lat, q)
}

// SuccessRate is OK / N as a fraction (0 for no calls).
func (s Summary) SuccessRate() float64 {
	if s.N == 0 {
		return 0
	}
	return float64(s.OK) / float64(s.N)
}

// CodesText lists the non-OK codes with their counts, most frequent first
// (then by name), or "-" when every call was OK.
func (s Summary) CodesText() string {
	type kv struct {
		c codes.Code
		n int
	}
	var l []kv
	for c, n := range s.Codes {
		if c != codes.OK && n > 0 {
			l = append(l, kv{c, n})
		}
	}
	if len(l) == 0 {
		return "-"
	}
	sort.Slice(l, func(i, j int) bool {
		if l[i].n != l[j].n {
			return l[i].n > l[j].n
		}
		return CodeName(l[i].c) < CodeName(l[j].c)
	})
	var b strings.Builder
	for i, x := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", CodeName(x.c), x.n)
	}
	return b.String()
}

// Window keeps the samples whose start lies in [from, to).
func Window(ss []Sample, from, to time.Duration) []Sample {
	var out []Sample
	for _, s := range ss {
		if s.Start >= from && s.Start < to {
			out = append(out, s)
		}
	}
	return out
}

// Median is the median of v (the mean of the middle two for an even
// count; 0 for none). v is not modified.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Slope is the slope of the least-squares line through (xs, ys); 0 when
// the xs do not vary.
func Slope(xs, ys []float64) float64 {
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
