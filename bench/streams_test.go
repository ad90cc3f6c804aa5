package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// streamsRunOf is a mode's record: n streams, ok completed, with
// first-token times p50 for half and p99 for the rest.
func streamsRunOf(n, ok int, p50, p99 time.Duration, spliced, equal int) *streamsRun {
	r := &streamsRun{n: n, ok: ok, spliced: spliced, splicedEqual: equal}
	for i := range n {
		d := p50
		if i >= n/2 {
			d = p99
		}
		r.ttfts = append(r.ttfts, d)
	}
	return r
}

func TestStreamsJudge(t *testing.T) {
	ms := time.Millisecond
	healthy := streamsRunOf(1000, 1000, 40*ms, 130*ms, 0, 0)
	today := streamsRunOf(2000, 1400, 40*ms, 900*ms, 0, 0)
	tests := []struct {
		name    string
		runs    map[string]*streamsRun
		misses  []string // the checks missed, by name
		wantErr string
	}{
		{name: "passes", runs: map[string]*streamsRun{"healthy": healthy, "today": today,
			"new": streamsRunOf(2000, 1995, 40*ms, 190*ms, 600, 600)}},
		{name: "misses completion, TTFT and seams", runs: map[string]*streamsRun{"healthy": healthy, "today": today,
			"new": streamsRunOf(2000, 1980, 40*ms, 200*ms, 600, 598)},
			misses: []string{"new: streams completed for the caller", "new: TTFT p99 / healthy p99", "new: spliced answers equal to the unbroken text"}},
		{name: "an unspliced answer that differs is a miss, in any mode", runs: map[string]*streamsRun{"healthy": healthy,
			"today": func() *streamsRun { r := streamsRunOf(2000, 1400, 40*ms, 900*ms, 0, 0); r.plainWrong = 1; return r }(),
			"new":   streamsRunOf(2000, 2000, 40*ms, 150*ms, 600, 600)},
			misses: []string{"every mode: other answers equal to the unbroken text"}},
		{name: "a mode that measured nothing is an error", runs: map[string]*streamsRun{"healthy": healthy, "today": today},
			wantErr: "mode new measured nothing"},
		{name: "a healthy reference with failures is an error", runs: map[string]*streamsRun{
			"healthy": streamsRunOf(1000, 999, 40*ms, 130*ms, 0, 0), "today": today, "new": streamsRunOf(2000, 2000, 40*ms, 150*ms, 600, 600)},
			wantErr: "not fault-free"},
		{name: "a new mode that spliced nothing is an error", runs: map[string]*streamsRun{"healthy": healthy, "today": today,
			"new": streamsRunOf(2000, 2000, 40*ms, 150*ms, 0, 0)},
			wantErr: "spliced no stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checks, err := judgeStreams(tt.runs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var misses []string
			for _, c := range checks {
				if !c.ok {
					misses = append(misses, c.what)
				}
			}
			if diff := cmp.Diff(misses, tt.misses); diff != "" {
				t.Errorf("misses (-got +want):\n%s", diff)
			}
		})
	}
}

func TestStreamsExtraTokens(t *testing.T) {
	r := &streamsRun{ok: 10, wantTokens: 2000, wantPrompt: 200}
	r.upstream.CompletionTokens, r.upstream.PromptTokens = 2600, 700
	if c, p := r.extra(); c != 60 || p != 50 {
		t.Errorf("extra() = %v, %v; want 60, 50", c, p)
	}
	if c, p := (&streamsRun{}).extra(); c != 0 || p != 0 {
		t.Errorf("extra() of nothing completed = %v, %v; want 0, 0", c, p)
	}
}

func TestStreamsReport(t *testing.T) {
	s := &streams{n: 2000, healthyN: 1000, tokens: 200, runs: map[string]*streamsRun{
		"healthy": streamsRunOf(1000, 1000, 40*time.Millisecond, 130*time.Millisecond, 0, 0),
		"today":   streamsRunOf(2000, 1400, 40*time.Millisecond, 900*time.Millisecond, 0, 0),
		"new":     streamsRunOf(2000, 1980, 40*time.Millisecond, 150*time.Millisecond, 600, 600),
	}}
	misses, err := s.judge()
	if err != nil || len(misses) != 1 || !strings.HasPrefix(misses[0], "new: streams completed for the caller: 99.00%") {
		t.Fatalf("judge() = %q, %v; want the completion target missed", misses, err)
	}
	var out strings.Builder
	s.report(&out)
	for _, want := range []string{"| new | 1980/2000 (99.00%)", "| new: streams completed for the caller | 99.00% | >= 99.5% | MISS |", "| new: TTFT p99 / healthy p99 | 1.15 (150.0 / 130.0 ms) | <= 1.5 | pass |", "600 of 600"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
