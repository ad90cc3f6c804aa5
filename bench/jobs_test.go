package main

import (
	"strings"
	"testing"
	"time"
)

var jobsTestBounds = jobsBounds{spareShare: 0.8, p99Ratio: 1.2}

// jobsRec is a clean bench jobs run: 1000 jobs all completed; a 400/s
// backend with 200 interactive answers/s over a 10 s steady span (burst end
// at 10 s, kill at 20 s) in which jobsSteady jobs finished; interactive p99
// 170 ms alone and with170 with the backlog.
func jobsRec(jobsSteady int, with170 time.Duration) jobsRecord {
	steady := summary(2000, 2000, 100*time.Millisecond, with170)
	steady.Throughput = 200
	return jobsRecord{
		jobs: 1000, submitted: 1000, completed: 1000,
		capacity: 400,
		base:     summary(3000, 3000, 100*time.Millisecond, 170*time.Millisecond),
		with:     summary(4000, 4000, 100*time.Millisecond, with170),
		steady:   steady, jobsSteady: jobsSteady,
		submit:   summary(1000, 1000, 2*time.Millisecond, 70*time.Millisecond),
		burstEnd: 10 * time.Second, killedAt: 20 * time.Second, allDone: 60 * time.Second,
		jobAnswers: 1001,
	}
}

func TestJobsJudge(t *testing.T) {
	tests := []struct {
		name    string
		rec     func(r *jobsRecord)
		want    []string
		wantErr string
	}{
		{name: "every target met"},
		{name: "bounds are inclusive: 80% of the spare, 1.2x the p99", rec: func(r *jobsRecord) {
			r.jobsSteady = 1600
			r.with.P99 = 204 * time.Millisecond
		}},
		{name: "slow jobs and a slowed interactive p99", rec: func(r *jobsRecord) {
			r.jobsSteady = 1500
			r.with.P99 = 210 * time.Millisecond
		}, want: []string{"job throughput 150/s < 80% of the spare 200/s", "interactive p99 1.24x its baseline > 1.20x"}},
		{name: "lost, failed and unread jobs, and a failed submission", rec: func(r *jobsRecord) {
			r.submitted, r.completed, r.lost, r.other, r.unread = 999, 990, 2, 5, 2
		}, want: []string{"990 of 1000 jobs completed (1 not submitted, 2 lost, 5 final otherwise or not final, 2 unread)", "2 lost, 0 recorded twice"}},
		{name: "results recorded twice, resubmissions unchecked", rec: func(r *jobsRecord) { r.twice, r.resubmitErrs = 3, 4 },
			want: []string{"0 lost, 3 recorded twice", "4 resubmissions failed: their keys were not checked"}},
		{name: "never killed: no steady span", rec: func(r *jobsRecord) { r.killedAt = -1 },
			want: []string{"replica 2 was never killed (half the jobs never finished)", "no steady span between the burst's end and the kill to measure job throughput over"}},
		{name: "no baseline is an error", rec: func(r *jobsRecord) { r.base.N, r.base.P99 = 0, 0 }, wantErr: "no interactive baseline"},
		{name: "no job submitted is an error", rec: func(r *jobsRecord) {
			r.submitted, r.completed, r.submitErr = 0, 0, "rpc error: code = Unavailable desc = connection refused"
		}, wantErr: "no job was submitted: rpc error: code = Unavailable desc = connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := jobsRec(1800, 180*time.Millisecond)
			if tt.rec != nil {
				tt.rec(&r)
			}
			j := &jobsBench{rec: r, o: jobsOpts{bounds: jobsTestBounds}}
			misses, err := j.judge()
			checkJudged(t, misses, err, tt.want, tt.wantErr)
		})
	}
}

func TestJobsReport(t *testing.T) {
	r := jobsRec(1500, 180*time.Millisecond)
	r.twice = 1
	j := &jobsBench{rec: r, o: jobsOpts{jobs: 1000, slots: 40, latency: 100 * time.Millisecond, share: 0.5, reserve: 0.1,
		postgres: "postgres://bench:secret@127.0.0.1:5432/postgres", bounds: jobsTestBounds}}
	var out strings.Builder
	j.report(&out)
	for _, s := range []string{
		"| jobs completed | 1000 of 1000 (100%) | 100% | pass |",
		"| results recorded twice | 1 (",
		"0 resubmissions failed) | 0 | MISS |",
		"| job throughput, burst end to kill | 150/s vs 200/s spare (400 capacity - 200 interactive answers/s): 75.00% | >= 80% | MISS |",
		"| interactive p99 alone / with the backlog | 170.0 / 180.0 ms (1.06x) | <= 1.2x | pass |",
		"| upstream answers per job | 1.001",
		"| interactive p99 from the burst's end to the kill | 180.0 ms (1.06x the baseline) |",
		"| submissions took / all jobs final after | 10s / 1m0s |",
		"postgres://bench:xxxxx@127.0.0.1:5432/postgres",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "secret") {
		t.Errorf("report shows the Postgres password:\n%s", out.String())
	}
	r.killedAt = -1
	if tab := jobsTable(r, jobsTestBounds); !strings.Contains(tab, "| job throughput, burst end to kill | - vs 200/s spare") || !strings.Contains(tab, ": - | >= 80% | MISS |") {
		t.Errorf("table without a steady span:\n%s", tab)
	}
}
