package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/internal/fakellm"
)

// summary is n calls of which ok succeeded, at p50 and p99.
func summary(n, ok int, p50, p99 time.Duration) load.Summary {
	return load.Summary{N: n, OK: ok, Codes: map[codes.Code]int{codes.OK: ok, codes.Unavailable: n - ok}, P50: p50, P99: p99}
}

// row is a busy row of n calls, ok of them answered, with upstream
// requests in total.
func row(n, ok int, upstream uint64, p99 time.Duration) *busyRow {
	sum := summary(n, ok, p99/2, p99)
	return &busyRow{sum: sum, steady: sum, upstream: fakellm.Stats{Total: upstream}, upstream2: fakellm.Stats{Total: upstream}, breakerOpenedIn: -1}
}

func TestBusyJudges(t *testing.T) {
	full := &busyScenario{name: "sole-full", capacity: 400}
	tests := []struct {
		name  string
		judge func(*busyScenario, map[string]*busyRow) []string
		s     *busyScenario
		rows  map[string]*busyRow
		want  []string
	}{
		{name: "sole-random passes at the recipe's success and upstream calls", judge: judgeSoleRandom,
			rows: map[string]*busyRow{"after": row(1000, 990, 1500, 300*time.Millisecond), "recipe": row(1000, 990, 1500, 5*time.Second)}},
		{name: "sole-random misses below the recipe, with more calls, slow", judge: judgeSoleRandom,
			rows: map[string]*busyRow{"after": row(1000, 900, 2000, 2*time.Second), "recipe": row(1000, 990, 1500, 5*time.Second)},
			want: []string{"success 90.00% below the recipe's 99.00%", "2.00 upstream calls per call, more than the recipe's 1.50", "p99 2000 ms >= 1 s"}},
		{name: "sole-random passes a hair below the recipe, within sampling error", judge: judgeSoleRandom,
			rows: map[string]*busyRow{"after": row(4000, 3470, 7080, 300*time.Millisecond), "recipe": row(4000, 3504, 7000, 5*time.Second)}},
		{name: "full passes at capacity with few busy answers", judge: judgeFull, s: full,
			rows: map[string]*busyRow{"after": {goodput: 380, upstream2: fakellm.Stats{Total: 1000, Busy: 10}}}},
		{name: "full misses with busy answers and low goodput", judge: judgeFull, s: full,
			rows: map[string]*busyRow{"after": {goodput: 300, upstream2: fakellm.Stats{Total: 1000, Busy: 100}}},
			want: []string{"steady busy share 10.00% > 5%", "goodput 300/s < 90% of the 400/s the backend can serve"}},
		{name: "strained 1.2x misses below 99% and over 1.8 calls, and worse than the recipe", judge: judgeStrained12,
			rows: map[string]*busyRow{"after": row(1000, 980, 1900, time.Second), "recipe": row(1000, 990, 1200, time.Second)},
			want: []string{"success over the second half 98.00% < 99%", "1.90 upstream calls per call over the second half > 1.8", "success 98.00% below the recipe's 99.00%", "1.90 upstream calls per call over the second half, more than the recipe's 1.20"}},
		{name: "strained 1.2x judges the second half: a warm-up's failures do not count", judge: judgeStrained12,
			rows: map[string]*busyRow{"after": func() *busyRow {
				r := row(1000, 950, 1700, time.Second)
				r.steady, r.upstream2 = summary(500, 497, 0, 0), fakellm.Stats{Total: 860}
				return r
			}(), "recipe": row(1000, 870, 1760, time.Second)}},
		{name: "strained 1.2x compares upstream calls with the recipe's over the second half", judge: judgeStrained12,
			rows: map[string]*busyRow{"after": func() *busyRow {
				r := row(1000, 995, 1820, time.Second)
				r.steady, r.upstream2 = summary(500, 500, 0, 0), fakellm.Stats{Total: 870}
				return r
			}(), "recipe": func() *busyRow {
				r := row(1000, 870, 1760, time.Second)
				r.steady, r.upstream2 = summary(500, 435, 0, 0), fakellm.Stats{Total: 840}
				return r
			}()},
			want: []string{"1.74 upstream calls per call over the second half, more than the recipe's 1.68"}},
		{name: "strained 1.2x passes", judge: judgeStrained12,
			rows: map[string]*busyRow{"after": row(1000, 1000, 1300, time.Second), "recipe": row(1000, 990, 1300, time.Second)}},
		{name: "over capacity passes with refusals fast and with RetryInfo", judge: judgeOver, s: &busyScenario{capacity: 280},
			rows: map[string]*busyRow{"after": {goodput: 270, failed: summary(100, 0, 20*time.Millisecond, 0), withRetryInfo: 100}, "recipe": {goodput: 250}}},
		{name: "over capacity misses on goodput, RetryInfo and slow refusals", judge: judgeOver, s: &busyScenario{capacity: 280},
			rows: map[string]*busyRow{"after": {goodput: 200, failed: summary(100, 0, 2*time.Second, 0), withRetryInfo: 50}, "recipe": {goodput: 250}},
			want: []string{"goodput 200/s < 90% of capacity 280/s", "goodput 200/s below the recipe's 250/s", "only 50% of refused calls carry RetryInfo", "refused calls wait 2000 ms (p50): not refused fast"}},
		{name: "dead passes when the breaker opens within 1 s", judge: judgeDead,
			rows: map[string]*busyRow{"after": {sum: summary(1000, 1000, 0, 0), breakerOpenedIn: 200 * time.Millisecond, deadAttempts: 5}}},
		{name: "dead misses when the breaker never opens", judge: judgeDead,
			rows: map[string]*busyRow{"after": {sum: summary(1000, 990, 0, 0), breakerOpenedIn: -1, deadAttempts: 50}},
			want: []string{"dead backend's breaker opened after -1ns, want within 1 s", "success 99.00%", "5.0% extra upstream calls (to the dead backend) > 1%"}},
		{name: "storm passes below the recipe's p99", judge: judgeStorm,
			rows: map[string]*busyRow{"after": row(1000, 1000, 1100, time.Second), "recipe": row(1000, 900, 1500, 3*time.Second)}},
		{name: "storm misses", judge: judgeStorm,
			rows: map[string]*busyRow{"after": row(1000, 990, 1400, 3*time.Second), "recipe": row(1000, 900, 1500, 3*time.Second)},
			want: []string{"success 99.00% < 99.9%", "amplification 1.40 > 1.3", "p99 not below the recipe's"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.judge(tt.s, tt.rows), tt.want); diff != "" {
				t.Errorf("misses (-got +want):\n%s", diff)
			}
		})
	}
}

func TestBusyJudgeAndReport(t *testing.T) {
	b := &busy{
		modes: []string{"recipe", "after"},
		scs: []*busyScenario{
			{name: "storm", judge: judgeStorm},
			{name: "sole-full", capacity: 400, judge: judgeFull},
			{name: "no-after", judge: judgeFull},
		},
		rows: []map[string]*busyRow{
			{"after": row(1000, 1000, 1100, time.Second), "recipe": row(1000, 900, 1500, 3*time.Second)},
			{"after": {goodput: 100}},
			{"recipe": row(10, 10, 10, time.Second)},
		},
	}
	misses, err := b.judge()
	want := []string{"sole-full: goodput 100/s < 90% of the 400/s the backend can serve"}
	if diff := cmp.Diff(misses, want); err != nil || diff != "" {
		t.Errorf("judge() = %v (-got +want):\n%s", err, diff)
	}
	var out strings.Builder
	b.report(&out)
	for _, s := range []string{"Targets (storm): pass", "Targets (sole-full): MISS: goodput 100/s", "#### no-after"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "Targets (no-after)") {
		t.Error("a scenario without an after row was judged")
	}
}
