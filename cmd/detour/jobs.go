package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/detour-dev/detour/jobs"
	"github.com/detour-dev/detour/metrics"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// JobsOptions are serve's settings of asynchronous jobs (detour.v1.Jobs).
// The zero value turns them off.
type JobsOptions struct {
	// DB is the job database: postgres://… for a fleet, sqlite:PATH for one
	// replica. Empty: no Jobs service.
	DB             string
	Retention      time.Duration
	Workers        int
	MaxQueued      int
	MaxAge         time.Duration
	AttemptTimeout time.Duration
	RescueAfter    time.Duration
	Reserve        float64

	// id names the River client (tests); empty lets River make one.
	id string
	// hold, when set, replaces the default wait for spare capacity (tests).
	hold time.Duration
}

func (o *JobsOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.DB, "jobs-db", os.Getenv("DETOUR_JOBS_DB"), "database of asynchronous jobs (detour.v1.Jobs): postgres://USER@HOST/DB for a fleet, or sqlite:PATH for one replica (env DETOUR_JOBS_DB; empty: no jobs)")
	fs.DurationVar(&o.Retention, "jobs-retention", 24*time.Hour, "how long a finished job and its answer are kept (an idempotency key names its job as long)")
	fs.IntVar(&o.Workers, "jobs-workers", 16, "jobs of one tenant this replica holds at once (waiting for spare capacity or calling upstream)")
	fs.IntVar(&o.MaxQueued, "jobs-max-queued", 100000, "most unfinished jobs a tenant may have; Submit refuses more with RESOURCE_EXHAUSTED")
	fs.DurationVar(&o.MaxAge, "jobs-max-age", 24*time.Hour, "a job's not_after when its submission sets none")
	fs.DurationVar(&o.AttemptTimeout, "jobs-attempt-timeout", 5*time.Minute, "bound of one run of a job (its wait for spare capacity and its upstream call)")
	fs.DurationVar(&o.RescueAfter, "jobs-rescue-after", 0, "how long a job may stay running before another replica runs it again (its replica died); 0: --jobs-attempt-timeout + 1m")
	fs.Float64Var(&o.Reserve, "jobs-reserve", router.DefaultReserve, "share of each backend's capacity limit jobs leave to interactive calls")
}

func (o *JobsOptions) problems() []string {
	if o.DB == "" {
		return nil
	}
	var p []string
	if _, err := jobs.ParseURL(o.DB); err != nil {
		p = append(p, "--jobs-db: "+err.Error())
	}
	if o.Retention <= 0 || o.MaxAge <= 0 || o.AttemptTimeout <= 0 || o.RescueAfter < 0 {
		p = append(p, "--jobs-retention, --jobs-max-age and --jobs-attempt-timeout must be > 0, --jobs-rescue-after >= 0")
	}
	if o.RescueAfter > 0 && o.RescueAfter <= o.AttemptTimeout {
		p = append(p, "--jobs-rescue-after must exceed --jobs-attempt-timeout: a job still running would be run twice")
	}
	if o.Workers < 1 || o.Workers > 10000 {
		p = append(p, "--jobs-workers must be between 1 and 10000")
	}
	if o.MaxQueued < 1 {
		p = append(p, "--jobs-max-queued must be >= 1")
	}
	if !(o.Reserve >= 0 && o.Reserve < 1) {
		p = append(p, "--jobs-reserve must be in [0, 1)")
	}
	return p
}

// startJobs opens the job database and serves detour.v1.Jobs on srv; stop
// puts the jobs in flight back for another replica and closes the
// database. Without --jobs-db it does nothing.
func (m *Main) startJobs(ctx context.Context, rt *router.Router, srv *server.Server, log *slog.Logger, mx *metrics.Metrics) (stop func(), err error) {
	o := m.Jobs
	if o.DB == "" {
		return func() {}, nil
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	eng, err := jobs.Open(octx, jobs.Config{
		URL: o.DB, Router: rt, Status: server.JobStatus(log), Logger: log, Metrics: mx,
		Retention: o.Retention, Workers: o.Workers, MaxQueued: o.MaxQueued, MaxAge: o.MaxAge,
		AttemptTimeout: o.AttemptTimeout, RescueAfter: o.RescueAfter, Reserve: o.Reserve, ID: o.id, Hold: o.hold,
	})
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	srv.ServeJobs(eng)
	kind, _ := jobs.ParseURL(o.DB)
	log.Info("jobs on", "database", kind, "workers_per_tenant", o.Workers, "reserve", o.Reserve)
	return func() { eng.Close() }, nil
}

// demoJobs are the demo's jobs: serve's defaults on the SQLite file db.
func demoJobs(db string) JobsOptions {
	return JobsOptions{DB: db, Retention: 24 * time.Hour, Workers: 16, MaxQueued: 100000, MaxAge: 24 * time.Hour,
		AttemptTimeout: 5 * time.Minute, Reserve: router.DefaultReserve}
}
