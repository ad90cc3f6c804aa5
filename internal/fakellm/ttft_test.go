package fakellm

import (
	"slices"
	"testing"
	"time"
)

// The wait for the first token: exactly TTFT without spread or tail;
// log-normal around it with TTFTSigma; with a tail, Pareto from TTFTTail,
// capped at 100 times it. Checked on many draws with wide margins (a
// failure by chance is far below one in a billion).
func TestTTFTDraws(t *testing.T) {
	draw := func(s Settings, n int) []time.Duration {
		snap := newSnapshot(s, nil)
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = snap.ttft()
		}
		slices.Sort(out)
		return out
	}
	if d := draw(Settings{TTFT: 30 * time.Millisecond}, 100); d[0] != 30*time.Millisecond || d[99] != 30*time.Millisecond {
		t.Errorf("no spread: %v..%v, want 30ms", d[0], d[99])
	}
	if d := draw(Settings{}, 10); d[9] != 0 {
		t.Errorf("zero settings: %v, want 0", d[9])
	}
	const n = 20000
	d := draw(Settings{TTFT: 100 * time.Millisecond, TTFTSigma: 0.5}, n)
	if med := d[n/2]; med < 95*time.Millisecond || med > 105*time.Millisecond {
		t.Errorf("sigma 0.5: median %v, want about 100ms", med)
	}
	if p99 := d[n*99/100]; p99 < 280*time.Millisecond || p99 > 360*time.Millisecond {
		t.Errorf("sigma 0.5: p99 %v, want about 320ms (e^(2.33*0.5) = 3.2x)", p99)
	}

	d = draw(Settings{TTFTTailRate: 1, TTFTTail: 10 * time.Millisecond}, n)
	if d[0] < 10*time.Millisecond || d[n-1] > time.Second {
		t.Errorf("tail: %v..%v, want within [10ms, 1s]", d[0], d[n-1])
	}
	over := n - sortSearch(d, 46*time.Millisecond) // P(X > 4.64 scale) = 10%
	if over < n*8/100 || over > n*12/100 {
		t.Errorf("tail: %d of %d draws over 4.64x the scale, want about 10%%", over, n)
	}
	d = draw(Settings{TTFTTailRate: 0.1, TTFTTail: time.Second}, n)
	tailed := n - sortSearch(d, time.Second)
	if tailed < n*8/100 || tailed > n*12/100 {
		t.Errorf("tail rate 0.1: %d of %d draws in the tail, want about 10%%", tailed, n)
	}
}

func sortSearch(d []time.Duration, v time.Duration) int {
	i, _ := slices.BinarySearch(d, v)
	return i
}

// breakAt breaks within 1..n-1, at the rate asked, never a stream of fewer
// than two chunks.
func TestBreakAt(t *testing.T) {
	snap := newSnapshot(Settings{BreakRate: 1, BreakClean: 0.5}, nil)
	seen := map[int]bool{}
	cleans := 0
	for range 2000 {
		at, clean := snap.breakAt(5)
		if at < 1 || at > 4 {
			t.Fatalf("breakAt(5) = %d, want 1..4", at)
		}
		seen[at] = true
		if clean {
			cleans++
		}
	}
	if len(seen) != 4 || cleans < 800 || cleans > 1200 {
		t.Errorf("positions %v, %d clean of 2000: want all of 1..4, about half clean", seen, cleans)
	}
	if at, _ := snap.breakAt(1); at != -1 {
		t.Errorf("breakAt(1) = %d, want -1", at)
	}
	if at, _ := newSnapshot(Settings{}, nil).breakAt(100); at != -1 {
		t.Errorf("rate 0: breakAt = %d, want -1", at)
	}
}
