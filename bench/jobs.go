package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("jobs", "asynchronous jobs on spare capacity: 2 replicas on one Postgres, a burst of jobs beside interactive load, one replica SIGKILLed midway", func() scenario { return &jobsBench{} })
}

type jobsOpts struct {
	jobs        int
	burst       time.Duration
	slots       int
	latency     time.Duration
	busyRate    float64
	share       float64
	baseline    time.Duration
	timeout     time.Duration
	postgres    string
	workers     int
	reserve     float64
	rescueAfter time.Duration
	bounds      jobsBounds
}

// jobsBounds are issue 16's targets.
type jobsBounds struct {
	spareShare float64 // job throughput / the spare capacity, at least
	p99Ratio   float64 // interactive p99 with the backlog / alone, at most
}

// jobsBench: fakellm answers half its calls busy at random and takes at
// most --slots calls at once (503 beyond): its capacity is slots/latency
// answers a second. Interactive Complete calls run at --share of that on
// replica 1, first alone (the baseline), then while --jobs jobs are
// submitted in a --burst, alternately to the two replicas. When half the
// jobs are done, replica 2 is killed with SIGKILL and started again. The
// run ends when every job is final (or at --timeout).
type jobsBench struct {
	o jobsOpts

	dbURL  string
	f      *harness.Fake
	doc    string
	args   []string // detour serve flags of both replicas
	r1, r2 *harness.Detour
	c1, c2 *grpc.ClientConn

	rec jobsRecord
}

// jobsRecord is what a run measured.
type jobsRecord struct {
	jobs, submitted int
	submitErr       string // the first failed Submit's error
	// Of the submitted jobs, read twice after the run: completed
	// (SUCCEEDED both times), lost (NOT_FOUND), other (final in another
	// state, or not final), unread (a Get failed otherwise).
	completed, lost, other, unread int
	// twice: answers that changed between the two reads, resubmissions
	// with the key that named another job, and keys with two jobs in the
	// database; resubmitErrs: resubmissions that failed (not verified).
	twice, resubmitErrs int
	capacity            float64 // the backend's answers/s
	base                load.Summary
	// with: interactive calls from the start of the burst to the kill;
	// steady: those from the burst's end to the kill (its Throughput is
	// the interactive answers/s there).
	with, steady load.Summary
	// jobsSteady jobs finished between the burst's end and the kill.
	jobsSteady                  int
	submit                      load.Summary
	burstEnd, killedAt, allDone time.Duration // killedAt < 0: never killed
	jobAnswers                  int           // upstream answers to jobs
	baseForeign, foreign        float64
}

// steadySpan is the window the job throughput is measured over.
func (r jobsRecord) steadySpan() time.Duration { return r.killedAt - r.burstEnd }

// jobRate is jobs finished per second over the steady span.
func (r jobsRecord) jobRate() float64 {
	return float64(r.jobsSteady) / r.steadySpan().Seconds()
}

// spare is the capacity the interactive load left over the steady span.
func (r jobsRecord) spare() float64 { return r.capacity - r.steady.Throughput }

func (r jobsRecord) p99Ratio() float64 { return float64(r.with.P99) / float64(r.base.P99) }

func (j *jobsBench) flags(fs *flag.FlagSet) {
	o := &j.o
	fs.IntVar(&o.jobs, "jobs", 10000, "jobs submitted")
	fs.DurationVar(&o.burst, "burst", 10*time.Second, "the jobs are submitted evenly over this")
	fs.IntVar(&o.slots, "slots", 40, "the backend's concurrency cap (503 beyond)")
	fs.DurationVar(&o.latency, "latency", 100*time.Millisecond, "the backend's mean latency (jitter a quarter of it)")
	fs.Float64Var(&o.busyRate, "busy-rate", 0.5, "share of the backend's calls answered busy at random")
	fs.Float64Var(&o.share, "share", 0.5, "interactive load as a share of the backend's capacity")
	fs.DurationVar(&o.baseline, "baseline", 20*time.Second, "interactive load alone before the jobs (the first quarter is warm-up)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound on the whole job phase")
	fs.StringVar(&o.postgres, "postgres", firstSet(os.Getenv("DETOUR_BENCH_POSTGRES_URL"), os.Getenv("DETOUR_TEST_POSTGRES_URL")),
		"URL of a Postgres where bench may create a database (env DETOUR_BENCH_POSTGRES_URL or DETOUR_TEST_POSTGRES_URL; `source .ci/services/postgres.sh` starts one)")
	fs.IntVar(&o.workers, "workers", 64, "--jobs-workers of each replica")
	fs.Float64Var(&o.reserve, "reserve", 0.1, "--jobs-reserve of each replica")
	fs.DurationVar(&o.rescueAfter, "rescue-after", 10*time.Second, "--jobs-rescue-after of each replica (--jobs-attempt-timeout is half of it)")
	fs.Float64Var(&o.bounds.spareShare, "target-spare", 0.8, "target: job throughput at least this share of the spare capacity")
	fs.Float64Var(&o.bounds.p99Ratio, "target-p99-ratio", 1.2, "target: interactive p99 with the backlog at most this multiple of its baseline")
}

func (j *jobsBench) setup(ctx context.Context) (func(), error) {
	var st stack
	o := j.o
	if o.postgres == "" {
		return st.stop, errors.New("no Postgres: pass --postgres URL (or `source .ci/services/postgres.sh` and run again)")
	}
	if o.jobs <= 0 || o.slots <= 0 || o.latency <= 0 || o.burst <= 0 || o.baseline <= 0 {
		return st.stop, errors.New("--jobs, --slots, --latency, --burst and --baseline must be positive")
	}
	dbURL, drop, err := benchDatabase(ctx, o.postgres)
	if err != nil {
		return st.stop, err
	}
	st.add(drop)
	j.dbURL = dbURL
	f, err := harness.StartFake(fakellm.Config{Region: "home", Name: "sole", Settings: fakellm.Settings{
		Latency: o.latency, Jitter: o.latency / 4, BusyRate: o.busyRate, MaxConcurrency: o.slots}}, false)
	if err != nil {
		return st.stop, err
	}
	st.add(f.Stop)
	j.f = f
	j.doc, err = configYAML(&regions.Config{Regions: []regions.Region{region("home", 0, regions.Backend{Name: "sole", Endpoint: f.OpenAIEndpoint()})}})
	if err != nil {
		return st.stop, err
	}
	j.args = []string{"--log-calls=false", "--jobs-db", dbURL, "--jobs-workers", fmt.Sprint(o.workers), "--jobs-reserve", harness.Ftoa(o.reserve),
		"--jobs-attempt-timeout", (o.rescueAfter / 2).String(), "--jobs-rescue-after", o.rescueAfter.String()}
	if j.r1, j.c1, err = j.startReplica(); err != nil {
		return st.stop, err
	}
	st.add(func() { j.c1.Close(); j.r1.Stop() })
	// Replica 2 is replaced midway: stop the one running then.
	if j.r2, j.c2, err = j.startReplica(); err != nil {
		return st.stop, err
	}
	st.add(func() {
		if j.c2 != nil {
			j.c2.Close()
		}
		if j.r2 != nil {
			j.r2.Stop()
		}
	})
	return st.stop, nil
}

// startReplica starts a detour replica on the bench's database and dials
// it.
func (j *jobsBench) startReplica() (*harness.Detour, *grpc.ClientConn, error) {
	d, err := harness.StartDetour(harness.DetourOptions{Config: j.doc, Region: "home", Args: j.args})
	if err != nil {
		return nil, nil, err
	}
	c, err := load.Dial(d.Addr)
	if err != nil {
		d.Stop()
		return nil, nil, err
	}
	return d, c, nil
}

func (j *jobsBench) run(ctx context.Context) error {
	o, rec := j.o, &j.rec
	rec.jobs = o.jobs
	rec.capacity = float64(o.slots) / o.latency.Seconds()
	rate := o.share * rec.capacity
	fmt.Fprintf(stderr, "bench jobs: backend %d slots x %v (%.0f answers/s), %.0f%% busy at random; interactive %.0f calls/s; %d jobs in %v\n",
		o.slots, o.latency, rec.capacity, 100*o.busyRate, rate, o.jobs, o.burst)
	rc := detourv1.NewRouterClient(j.c1)
	var jcMu sync.Mutex
	jc := []detourv1.JobsClient{detourv1.NewJobsClient(j.c1), detourv1.NewJobsClient(j.c2)}
	client := func(i int) detourv1.JobsClient {
		jcMu.Lock()
		defer jcMu.Unlock()
		return jc[i]
	}
	var interactiveN atomic.Int64
	interactive := func(ctx context.Context) error {
		return load.Unary(rc, load.Request(fmt.Sprint("interactive ", interactiveN.Add(1))), 30*time.Second)(ctx)
	}

	// Baseline: the interactive load alone.
	mark := harness.MarkCPU()
	fmt.Fprintf(stderr, "bench jobs: baseline, interactive alone for %v\n", o.baseline)
	base := load.OpenLoop(ctx, rate, o.baseline, 4096, nil, interactive)
	warm := o.baseline / 4
	rec.base = load.Summarize(load.Window(base.Samples, warm, o.baseline), o.baseline-warm)
	rec.baseForeign = mark.ForeignCPU()
	if err := ctx.Err(); err != nil {
		return err
	}

	// The jobs, beside the same interactive load.
	mark = harness.MarkCPU()
	f0, err := j.f.Stats()
	if err != nil {
		return err
	}
	jctx, stop := context.WithTimeout(ctx, o.timeout)
	defer stop()
	var inter *load.Run
	interDone := make(chan struct{})
	go func() {
		defer close(interDone)
		inter = load.OpenLoop(jctx, rate, o.timeout, 4096, nil, interactive)
	}()
	began := time.Now()
	ids := make([]string, o.jobs)
	submitS := make([]load.Sample, o.jobs)
	var submitted atomic.Int64
	var firstErr sync.Once
	var wg sync.WaitGroup
	fmt.Fprintf(stderr, "bench jobs: submitting %d jobs over %v\n", o.jobs, o.burst)
	for i := range o.jobs {
		at := time.Duration(float64(o.burst) * float64(i) / float64(o.jobs))
		if d := time.Until(began.Add(at)); d > 0 {
			select {
			case <-time.After(d):
			case <-jctx.Done():
			}
		}
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(jctx, 30*time.Second)
			defer cancel()
			t0 := time.Now()
			job, err := client(i%2).Submit(sctx, jobSubmission(i))
			submitS[i] = load.Sample{Start: t0.Sub(began), Lat: time.Since(t0), Code: load.CodeOf(err), Err: err}
			if err != nil {
				firstErr.Do(func() { rec.submitErr = err.Error() })
				return
			}
			ids[i] = job.GetId()
			submitted.Add(1)
		})
	}
	wg.Wait()
	rec.burstEnd = time.Since(began)
	rec.submitted = int(submitted.Load())
	rec.submit = load.Summarize(submitS, rec.burstEnd)
	fmt.Fprintf(stderr, "bench jobs: %d of %d submitted in %v\n", rec.submitted, o.jobs, rec.burstEnd.Round(time.Millisecond))

	db, err := pgx.Connect(ctx, j.dbURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	count := func(states ...string) (int, error) {
		var n int
		err := db.QueryRow(jctx, `SELECT count(*) FROM river_job WHERE state::text = ANY($1)`, states).Scan(&n)
		return n, err
	}
	rec.killedAt = -1
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for jctx.Err() == nil {
		select {
		case <-tick.C:
		case <-jctx.Done():
			continue
		}
		done, err := count("completed", "cancelled", "discarded")
		if err != nil {
			if jctx.Err() != nil {
				break
			}
			return fmt.Errorf("counting finished jobs: %w", err)
		}
		if rec.killedAt < 0 && done >= o.jobs/2 {
			rec.killedAt = time.Since(began)
			fmt.Fprintf(stderr, "bench jobs: %d jobs done at %v: SIGKILL replica 2, then start it again\n", done, rec.killedAt.Round(time.Millisecond))
			j.r2.Kill()
			j.c2.Close()
			j.r2, j.c2 = nil, nil
			r2, c2, err := j.startReplica()
			if err != nil {
				return fmt.Errorf("restarting replica 2: %w", err)
			}
			j.r2, j.c2 = r2, c2
			jcMu.Lock()
			jc[1] = detourv1.NewJobsClient(c2)
			jcMu.Unlock()
		}
		if done >= rec.submitted {
			break
		}
	}
	rec.allDone = time.Since(began)
	if jctx.Err() != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "bench jobs: --timeout %v ran out before every job was final\n", o.timeout)
	}
	stop()
	<-interDone
	rec.foreign = mark.ForeignCPU()
	f1, err := j.f.Stats()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// Every job is read twice, the second time after resubmitting it with
	// its key: an answer that changed, or a key that made a second job,
	// counts as recorded twice.
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer rcancel()
	first, firstErrs := readJobs(rctx, client(0), ids)
	for i, id := range ids {
		if id == "" {
			continue
		}
		job, err := client(1-i%2).Submit(rctx, jobSubmission(i))
		switch {
		case err != nil:
			rec.resubmitErrs++
		case job.GetId() != id:
			rec.twice++
		}
	}
	second, secondErrs := readJobs(rctx, client(1), ids)
	var finished []time.Duration
	for i, id := range ids {
		if id == "" {
			continue
		}
		a, b := first[i], second[i]
		switch {
		case status.Code(firstErrs[i]) == codes.NotFound || status.Code(secondErrs[i]) == codes.NotFound:
			rec.lost++
		case a == nil || b == nil:
			rec.unread++
		case a.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED:
			rec.other++
		default:
			rec.completed++
			finished = append(finished, a.GetFinishedAt().AsTime().Sub(began))
			if b.GetState() != a.GetState() || b.GetResult().GetId() != a.GetResult().GetId() {
				rec.twice++
			}
		}
	}
	var perKey int
	if err := db.QueryRow(rctx, `SELECT count(*) FROM (SELECT 1 FROM river_job GROUP BY args->>'tenant', args->>'key' HAVING count(*) > 1) d`).Scan(&perKey); err != nil {
		return fmt.Errorf("counting keys with two jobs: %w", err)
	}
	rec.twice += perKey

	// The steady part: from the end of the burst to the kill.
	to := rec.killedAt
	if to < 0 {
		to = rec.allDone
	}
	for _, t := range finished {
		if t >= rec.burstEnd && t < to {
			rec.jobsSteady++
		}
	}
	rec.steady = load.Summarize(load.Window(inter.Samples, rec.burstEnd, to), max(to-rec.burstEnd, 0))
	rec.with = load.Summarize(load.Window(inter.Samples, 0, to), to)
	rec.jobAnswers = int(f1.OK-f0.OK) - answered(inter.Samples)
	return nil
}

// answered counts the calls of ss answered (the interactive ones: the rest
// of the backend's answers are the jobs').
func answered(ss []load.Sample) int {
	n := 0
	for _, s := range ss {
		if s.Code == codes.OK {
			n++
		}
	}
	return n
}

func (j *jobsBench) judge() ([]string, error) { return jobsJudge(j.rec, j.o.bounds) }

// jobsJudge holds a run to issue 16's targets: every job completed, none
// lost or recorded twice, the job throughput over the steady span at least
// bounds.spareShare of the spare capacity, the interactive p99 with the
// backlog at most bounds.p99Ratio times its baseline. It is an error when
// the run has no baseline, no submitted job or no steady span.
func jobsJudge(r jobsRecord, b jobsBounds) ([]string, error) {
	switch {
	case r.base.N == 0 || r.base.P99 <= 0:
		return nil, errors.New("no interactive baseline")
	case r.submitted == 0:
		return nil, fmt.Errorf("no job was submitted: %s", r.submitErr)
	}
	var miss []string
	if r.completed != r.jobs {
		miss = append(miss, fmt.Sprintf("%d of %d jobs completed (%d not submitted, %d lost, %d final otherwise or not final, %d unread)",
			r.completed, r.jobs, r.jobs-r.submitted, r.lost, r.other, r.unread))
	}
	if r.lost > 0 || r.twice > 0 {
		miss = append(miss, fmt.Sprintf("%d lost, %d recorded twice", r.lost, r.twice))
	}
	if r.resubmitErrs > 0 {
		miss = append(miss, fmt.Sprintf("%d resubmissions failed: their keys were not checked", r.resubmitErrs))
	}
	if r.killedAt < 0 {
		miss = append(miss, "replica 2 was never killed (half the jobs never finished)")
	}
	if r.steadySpan() <= 0 {
		miss = append(miss, "no steady span between the burst's end and the kill to measure job throughput over")
	} else if r.jobRate() < b.spareShare*r.spare() {
		miss = append(miss, fmt.Sprintf("job throughput %.0f/s < %.0f%% of the spare %.0f/s", r.jobRate(), 100*b.spareShare, r.spare()))
	}
	if r.p99Ratio() > b.p99Ratio {
		miss = append(miss, fmt.Sprintf("interactive p99 %.2fx its baseline > %.2fx", r.p99Ratio(), b.p99Ratio))
	}
	return miss, nil
}

func (j *jobsBench) report(w io.Writer) {
	o, r := j.o, j.rec
	fmt.Fprintf(w, "\n### bench jobs\n\n")
	fmt.Fprintf(w, "%s; load %s. Backend: %d slots (503 beyond), %v latency, %.0f%% busy at random: capacity %.0f answers/s. Interactive %.0f calls/s (%.0f%%) on replica 1. "+
		"%d jobs submitted in %v, alternately to replicas 1 and 2 (each --jobs-workers %d, --jobs-reserve %s, --jobs-rescue-after %v); "+
		"replica 2 SIGKILLed and restarted at %v, when half were done. Postgres: %s.\n\n",
		report.Machine(), report.LoadAvg(), o.slots, o.latency, 100*o.busyRate, r.capacity, o.share*r.capacity, 100*o.share, o.jobs, o.burst, o.workers,
		harness.Ftoa(o.reserve), o.rescueAfter, r.killedAt.Round(time.Millisecond), redactURL(o.postgres))
	fmt.Fprint(w, jobsTable(r, o.bounds))
}

// jobsTable is the run's table, a verdict beside each target.
func jobsTable(r jobsRecord, b jobsBounds) string {
	span := r.steadySpan() > 0
	jobRate, share := "-", "-"
	if span {
		jobRate = fmt.Sprintf("%.0f/s", r.jobRate())
		share = report.Percent(r.jobRate() / r.spare())
	}
	ratio := r.p99Ratio()
	rows := [][]string{
		{"jobs completed", fmt.Sprintf("%d of %d (%s)", r.completed, r.jobs, report.Percent(float64(r.completed)/float64(max(r.jobs, 1)))), "100%", report.Verdict(r.completed == r.jobs)},
		{"jobs lost", fmt.Sprintf("%d (%d not submitted, %d final otherwise or not final, %d unread)", r.lost, r.jobs-r.submitted, r.other, r.unread), "0", report.Verdict(r.lost == 0)},
		{"results recorded twice", fmt.Sprintf("%d (answers changed or second jobs for a key, after resubmitting all %d keys; %d resubmissions failed)", r.twice, r.submitted, r.resubmitErrs), "0", report.Verdict(r.twice == 0 && r.resubmitErrs == 0)},
		{"job throughput, burst end to kill", fmt.Sprintf("%s vs %.0f/s spare (%.0f capacity - %.0f interactive answers/s): %s", jobRate, r.spare(), r.capacity, r.steady.Throughput, share),
			fmt.Sprintf(">= %.0f%%", 100*b.spareShare), report.Verdict(span && r.jobRate() >= b.spareShare*r.spare())},
		{"interactive p99 alone / with the backlog", fmt.Sprintf("%s / %s ms (%.2fx)", report.Ms(r.base.P99), report.Ms(r.with.P99), ratio), fmt.Sprintf("<= %.1fx", b.p99Ratio), report.Verdict(ratio <= b.p99Ratio)},
		{"interactive p99 from the burst's end to the kill", fmt.Sprintf("%s ms (%.2fx the baseline)", report.Ms(r.steady.P99), float64(r.steady.P99)/float64(max(r.base.P99, 1))), "", ""},
		{"interactive success alone / with the backlog", fmt.Sprintf("%s / %s", report.Percent(r.base.SuccessRate()), report.Percent(r.with.SuccessRate())), "", ""},
		{"submit p50 / p99", fmt.Sprintf("%s / %s ms (%s ok)", report.Ms(r.submit.P50), report.Ms(r.submit.P99), report.Percent(r.submit.SuccessRate())), "", ""},
		{"submissions took / all jobs final after", fmt.Sprintf("%v / %v", r.burstEnd.Round(100*time.Millisecond), r.allDone.Round(100*time.Millisecond)), "", ""},
		{"upstream answers per job", fmt.Sprintf("%.3f (a killed run's call may be made again)", float64(r.jobAnswers)/float64(max(r.completed, 1))), "", ""},
		{"CPU of other processes (Postgres included)", fmt.Sprintf("%.2f cores baseline, %.2f with jobs", r.baseForeign, r.foreign), "", ""},
	}
	return report.Table([]string{"measure", "value", "target", "verdict"}, rows)
}

// firstSet is the first of ss that is not empty.
func firstSet(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// jobSubmission is job i's submission: the same each time (its key names
// it).
func jobSubmission(i int) *detourv1.SubmitRequest {
	return &detourv1.SubmitRequest{Request: load.Request(fmt.Sprint("job ", i)), IdempotencyKey: fmt.Sprint("bench-", i)}
}

// readJobs Gets every job, 32 at a time: the job or the Get's error, per
// id ("" ids are skipped).
func readJobs(ctx context.Context, c detourv1.JobsClient, ids []string) ([]*detourv1.Job, []error) {
	out, errs := make([]*detourv1.Job, len(ids)), make([]error, len(ids))
	sem := make(chan struct{}, 32)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for i, id := range ids {
		if id == "" {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			j, err := c.Get(ctx, &detourv1.GetJobRequest{Id: id})
			out[i], errs[i] = j, err
			if err != nil && failed.Add(1) == 1 {
				fmt.Fprintf(stderr, "bench jobs: get %s: %v\n", id, err)
			}
		})
	}
	wg.Wait()
	return out, errs
}

// benchDatabase creates a database for the run on the Postgres at admin and
// returns its URL and the function that drops it.
func benchDatabase(ctx context.Context, admin string) (string, func(), error) {
	u, err := url.Parse(admin)
	if err != nil {
		return "", nil, fmt.Errorf("--postgres: %w", err)
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("postgres %s: %w", redactURL(admin), err)
	}
	defer conn.Close(context.Background())
	var b [6]byte
	rand.Read(b[:])
	name := "detour_bench_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u.Path = "/" + name
	return u.String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			fmt.Fprintf(stderr, "bench jobs: drop database %s: %v\n", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(stderr, "bench jobs: drop database %s: %v\n", name, err)
		}
	}, nil
}

// redactURL is s with its password, if any, replaced.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
