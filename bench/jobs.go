//go:build ignore

// Ported to the scenario shape of bench/scenario.go in a following commit.

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"gopkg.in/yaml.v3"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("jobs", "asynchronous jobs on spare capacity: 2 replicas on one Postgres, a burst of jobs beside interactive load, one replica SIGKILLed midway", jobsBench)
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
}

// jobsBench: fakellm answers half its calls busy at random and takes at
// most --slots calls at once (503 beyond): its capacity is slots/latency
// answers a second. Interactive Complete calls run at --share of that on
// replica 1, first alone (the baseline), then while --jobs jobs are
// submitted in a --burst, alternately to the two replicas. When half the
// jobs are done, replica 2 is killed with SIGKILL and started again. The
// run ends when every job is final.
func jobsBench(ctx context.Context, args []string) error {
	o := jobsOpts{}
	fs := flag.NewFlagSet("bench jobs", flag.ContinueOnError)
	fs.IntVar(&o.jobs, "jobs", 10000, "jobs submitted")
	fs.DurationVar(&o.burst, "burst", 10*time.Second, "the jobs are submitted evenly over this")
	fs.IntVar(&o.slots, "slots", 40, "the backend's concurrency cap (503 beyond)")
	fs.DurationVar(&o.latency, "latency", 100*time.Millisecond, "the backend's mean latency (jitter a quarter of it)")
	fs.Float64Var(&o.busyRate, "busy-rate", 0.5, "share of the backend's calls answered busy at random")
	fs.Float64Var(&o.share, "share", 0.5, "interactive load as a share of the backend's capacity")
	fs.DurationVar(&o.baseline, "baseline", 20*time.Second, "interactive load alone before the jobs (the first quarter is warm-up)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound on the whole job phase")
	fs.StringVar(&o.postgres, "postgres", cmpStr(os.Getenv("DETOUR_BENCH_POSTGRES_URL"), os.Getenv("DETOUR_TEST_POSTGRES_URL")),
		"URL of a Postgres where bench may create a database (env DETOUR_BENCH_POSTGRES_URL or DETOUR_TEST_POSTGRES_URL; `source .ci/services/postgres.sh` starts one)")
	fs.IntVar(&o.workers, "workers", 64, "--jobs-workers of each replica")
	fs.Float64Var(&o.reserve, "reserve", 0.1, "--jobs-reserve of each replica")
	fs.DurationVar(&o.rescueAfter, "rescue-after", 10*time.Second, "--jobs-rescue-after of each replica (--jobs-attempt-timeout is half of it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.postgres == "" {
		return errors.New("no Postgres: pass --postgres URL (or `source .ci/services/postgres.sh` and run again)")
	}
	dbURL, drop, err := benchDatabase(ctx, o.postgres)
	if err != nil {
		return err
	}
	defer drop()

	capacity := float64(o.slots) / o.latency.Seconds()
	rate := o.share * capacity
	fmt.Fprintf(stderr, "bench jobs: backend %d slots x %v (%.0f answers/s), %.0f%% busy at random; interactive %.0f calls/s; %d jobs in %v\n",
		o.slots, o.latency, capacity, 100*o.busyRate, rate, o.jobs, o.burst)
	f, err := startFake(fakellm.Config{Region: "home", Name: "sole", Settings: fakellm.Settings{
		Latency: o.latency, Jitter: o.latency / 4, BusyRate: o.busyRate, MaxConcurrency: o.slots}}, false)
	if err != nil {
		return err
	}
	defer f.stop()
	cfg := regions.Config{Regions: []regions.Region{{Name: "home", Backends: []regions.Backend{{Name: "sole", Endpoint: f.openaiEndpoint()}}}}}
	doc, err := yaml.Marshal(&cfg)
	if err != nil {
		return err
	}
	flags := []string{"--log-calls=false", "--jobs-db", dbURL, "--jobs-workers", fmt.Sprint(o.workers), "--jobs-reserve", ftoa(o.reserve),
		"--jobs-attempt-timeout", (o.rescueAfter / 2).String(), "--jobs-rescue-after", o.rescueAfter.String()}
	r1, err := startDetour(string(doc), "home", false, flags...)
	if err != nil {
		return err
	}
	defer r1.stop()
	r2, err := startDetour(string(doc), "home", false, flags...)
	if err != nil {
		return err
	}
	defer func() { r2.stop() }()
	c1, err := dial(r1.addr)
	if err != nil {
		return err
	}
	defer c1.Close()
	c2, err := dial(r2.addr)
	if err != nil {
		return err
	}
	defer func() { c2.Close() }()
	rc := detourv1.NewRouterClient(c1)
	jc := []detourv1.JobsClient{detourv1.NewJobsClient(c1), detourv1.NewJobsClient(c2)}
	var interactiveN atomic.Int64
	interactive := func(ctx context.Context) error {
		return unaryCall(rc, request(fmt.Sprint("interactive ", interactiveN.Add(1))), 30*time.Second)(ctx)
	}

	// Baseline: the interactive load alone.
	mark := markCPU()
	fmt.Fprintf(stderr, "bench jobs: baseline, interactive alone for %v\n", o.baseline)
	base := openLoop(ctx, rate, o.baseline, 4096, nil, interactive)
	warm := o.baseline / 4
	baseS := summarize(window(base.Samples, warm, o.baseline), o.baseline-warm)
	baseForeign := mark.foreignCPU()

	// The jobs, beside the same interactive load.
	mark = markCPU()
	f0, err := f.stats()
	if err != nil {
		return err
	}
	jctx, stop := context.WithTimeout(ctx, o.timeout)
	defer stop()
	var inter *run
	interDone := make(chan struct{})
	go func() {
		defer close(interDone)
		inter = openLoop(jctx, rate, o.timeout, 4096, nil, interactive)
	}()
	began := time.Now()
	ids := make([]string, o.jobs)
	submitS := make([]sample, o.jobs)
	var submitted atomic.Int64
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
			j, err := jc[i%2].Submit(sctx, jobSubmission(i))
			submitS[i] = sample{Start: t0.Sub(began), Lat: time.Since(t0), Code: codeOf(err), Err: err}
			if err == nil {
				ids[i] = j.GetId()
				submitted.Add(1)
			}
		})
	}
	wg.Wait()
	burstEnd := time.Since(began)
	fmt.Fprintf(stderr, "bench jobs: %d of %d submitted in %v\n", submitted.Load(), o.jobs, burstEnd.Round(time.Millisecond))

	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	count := func(states ...string) int {
		var n int
		db.QueryRow(jctx, `SELECT count(*) FROM river_job WHERE state::text = ANY($1)`, states).Scan(&n)
		return n
	}
	var killedAt time.Duration = -1
	tick := time.NewTicker(200 * time.Millisecond)
	for jctx.Err() == nil {
		<-tick.C
		done := count("completed", "cancelled", "discarded")
		if killedAt < 0 && done >= o.jobs/2 {
			killedAt = time.Since(began)
			fmt.Fprintf(stderr, "bench jobs: %d jobs done at %v: SIGKILL replica 2, then start it again\n", done, killedAt.Round(time.Millisecond))
			r2.kill()
			if r2, err = startDetour(string(doc), "home", false, flags...); err != nil {
				tick.Stop()
				return err
			}
			c2.Close()
			if c2, err = dial(r2.addr); err != nil {
				tick.Stop()
				return err
			}
			jc[1] = detourv1.NewJobsClient(c2)
		}
		if done >= int(submitted.Load()) {
			break
		}
	}
	tick.Stop()
	allDone := time.Since(began)
	stop()
	<-interDone
	foreign := mark.foreignCPU()
	f1, err := f.stats()
	if err != nil {
		return err
	}

	// Every job is read twice, the second time after resubmitting it with
	// its key: an answer that changed, or a key that made a second job,
	// counts as recorded twice.
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer rcancel()
	first := readJobs(rctx, jc[0], ids)
	dups := 0
	for i, id := range ids {
		if id == "" {
			continue
		}
		j, err := jc[1-i%2].Submit(rctx, jobSubmission(i))
		if err != nil || j.GetId() != id {
			dups++
		}
	}
	second := readJobs(rctx, jc[1], ids)
	var completed, lost, twice int
	var finished []time.Duration
	for i, id := range ids {
		if id == "" {
			continue
		}
		a, b := first[i], second[i]
		switch {
		case a == nil || b == nil || a.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED:
			lost++
		default:
			completed++
			finished = append(finished, a.GetFinishedAt().AsTime().Sub(began))
			if b.GetState() != a.GetState() || b.GetResult().GetId() != a.GetResult().GetId() {
				twice++
			}
		}
	}
	twice += dups
	var perKey int
	db.QueryRow(rctx, `SELECT count(*) FROM (SELECT 1 FROM river_job GROUP BY args->>'tenant', args->>'key' HAVING count(*) > 1) d`).Scan(&perKey)
	twice += perKey

	// Throughput in the steady part: from the end of the burst to the kill.
	to := killedAt
	if to < 0 {
		to = allDone
	}
	jobsIn := 0
	for _, t := range finished {
		if t >= burstEnd && t < to {
			jobsIn++
		}
	}
	span := to - burstEnd
	inB := window(inter.Samples, burstEnd, to)
	interB := summarize(inB, span)
	interWith := summarize(window(inter.Samples, 0, to), to)
	jobRate := float64(jobsIn) / span.Seconds()
	spare := capacity - interB.Throughput
	subS := summarize(submitS, burstEnd)
	jobAnswers := int(f1.OK-f0.OK) - interactiveOK(inter.Samples)

	fmt.Printf("\n### bench jobs\n\n")
	fmt.Printf("Backend: %d slots (503 beyond), %v latency, %.0f%% busy at random: capacity %.0f answers/s. Interactive %.0f calls/s (%.0f%%) on replica 1. "+
		"%d jobs submitted in %v, alternately to replicas 1 and 2 (each --jobs-workers %d, --jobs-reserve %s, --jobs-rescue-after %v); "+
		"replica 2 SIGKILLed and restarted at %v, when half were done. Postgres: %s.\n\n",
		o.slots, o.latency, 100*o.busyRate, capacity, rate, 100*o.share, o.jobs, o.burst, o.workers, ftoa(o.reserve), o.rescueAfter,
		killedAt.Round(time.Millisecond), redactURL(o.postgres))
	ratio := float64(interWith.P99) / float64(baseS.P99)
	rows := [][]string{
		{"jobs completed", fmt.Sprintf("%d of %d (%s)", completed, o.jobs, pctText(float64(completed)/float64(o.jobs))), "100%", verdict(completed == o.jobs)},
		{"jobs lost", fmt.Sprint(lost + o.jobs - int(submitted.Load())), "0", verdict(lost == 0 && int(submitted.Load()) == o.jobs)},
		{"results recorded twice", fmt.Sprintf("%d (answers changed or second jobs for a key, after resubmitting all %d keys)", twice, submitted.Load()), "0", verdict(twice == 0)},
		{"job throughput, burst end to kill", fmt.Sprintf("%.0f/s vs %.0f/s spare (%.0f capacity - %.0f interactive answers/s): %s", jobRate, spare, capacity, interB.Throughput, pctText(jobRate/spare)), ">= 80%", verdict(jobRate >= 0.8*spare)},
		{"interactive p99 alone / with the backlog", fmt.Sprintf("%s / %s ms (%.2fx)", ms(baseS.P99), ms(interWith.P99), ratio), "<= 1.2x", verdict(ratio <= 1.2)},
		{"interactive success alone / with the backlog", fmt.Sprintf("%s / %s", pctText(baseS.successRate()), pctText(interWith.successRate())), "", ""},
		{"submit p50 / p99", fmt.Sprintf("%s / %s ms (%s ok)", ms(subS.P50), ms(subS.P99), pctText(subS.successRate())), "", ""},
		{"all jobs final after", allDone.Round(100 * time.Millisecond).String(), "", ""},
		{"upstream answers per job", fmt.Sprintf("%.3f (a killed run's call may be made again)", float64(jobAnswers)/float64(max(completed, 1))), "", ""},
		{"CPU of other processes (Postgres included)", fmt.Sprintf("%.2f cores baseline, %.2f with jobs", baseForeign, foreign), "", ""},
	}
	fmt.Print(mdTable([]string{"measure", "value", "target", "verdict"}, rows))
	var miss []string
	if completed != o.jobs {
		miss = append(miss, fmt.Sprintf("%d of %d jobs completed", completed, o.jobs))
	}
	if lost > 0 || twice > 0 {
		miss = append(miss, fmt.Sprintf("%d lost, %d recorded twice", lost, twice))
	}
	if jobRate < 0.8*spare {
		miss = append(miss, fmt.Sprintf("job throughput %.0f/s < 80%% of the spare %.0f/s", jobRate, spare))
	}
	if ratio > 1.2 {
		miss = append(miss, fmt.Sprintf("interactive p99 %.2fx its baseline", ratio))
	}
	if len(miss) > 0 {
		return missed("%s", strings.Join(miss, "; "))
	}
	return nil
}

func cmpStr(ss ...string) string {
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
	return &detourv1.SubmitRequest{Request: request(fmt.Sprint("job ", i)), IdempotencyKey: fmt.Sprint("bench-", i)}
}

func interactiveOK(ss []sample) int {
	n := 0
	for _, s := range ss {
		if s.Code == codes.OK {
			n++
		}
	}
	return n
}

// readErrs counts failed reads; the first is printed.
var readErrs atomic.Int64

// readJobs Gets every job, 32 at a time.
func readJobs(ctx context.Context, c detourv1.JobsClient, ids []string) []*detourv1.Job {
	out := make([]*detourv1.Job, len(ids))
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i, id := range ids {
		if id == "" {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			j, err := c.Get(ctx, &detourv1.GetJobRequest{Id: id})
			if err == nil {
				out[i] = j
			} else if readErrs.Add(1) == 1 {
				fmt.Fprintf(stderr, "bench jobs: get %s: %v\n", id, err)
			}
		})
	}
	wg.Wait()
	return out
}

// benchDatabase creates a database for the run on the Postgres at admin and
// returns its URL and the function that drops it.
func benchDatabase(ctx context.Context, admin string) (string, func(), error) {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("postgres %s: %w", redactURL(admin), err)
	}
	defer conn.Close(context.Background())
	var b [6]byte
	rand.Read(b[:])
	name := "detour_bench_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, err
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	return u.String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, admin); err == nil {
			conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			conn.Close(ctx)
		}
	}, nil
}

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
