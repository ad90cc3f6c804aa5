// Package jobs runs Complete calls asynchronously on River
// (github.com/riverqueue/river), a maintained Go job queue: a caller submits
// a request and comes back for its answer instead of holding a call open
// while the provider is saturated.
//
// Jobs live in a database: Postgres for a fleet of replicas, SQLite for one
// replica (and `detour demo`). A job is in the database once Submit
// returns; any replica's workers may run it; one that dies mid-run has its
// jobs run again elsewhere after Config.RescueAfter; a job's outcome is
// recorded once, in the same update that ends it (River's RecordOutput).
//
//	e, err := jobs.Open(ctx, jobs.Config{URL: "sqlite:/var/lib/detour/jobs.db", Router: rt})
//	if err != nil { ... }
//	defer e.Close()
//	job, _, err := e.Submit(ctx, jobs.Submission{Tenant: "acme", Request: req, Key: "order-42"})
//	err = e.Watch(ctx, "acme", job.Id, func(j *detourv1.Job) error { ...; return nil })
//
// # Spare capacity only
//
// Workers call the same router as interactive calls, marked
// router.WithBackground: an attempt starts only while its backend has free
// slots beyond Config.Reserve, never waits in a backend's queue, and gives
// its slot to an interactive call that finds no room (it is preempted and
// the job put back). A replica's runs wait for spare slots in a gate that
// serves tenants in turn. No spare capacity within Config.Hold, or a busy
// answer, puts the job back with a jittered exponential backoff; its
// not_after bounds it all (EXPIRED).
//
// # Tenants
//
// A job belongs to its tenant; Get, Watch, Cancel and List of another
// tenant's job see nothing (ErrNotFound). Each tenant's jobs are in a River
// queue of their own, which every replica works Config.Workers at a time,
// so one tenant's backlog never stands in front of another's jobs; a tenant
// may have at most Config.MaxQueued unfinished jobs.
//
// # States
//
// River's states map to the API's: available, scheduled, retryable and
// pending are QUEUED (EXPIRED once not_after passed); running is RUNNING;
// completed is SUCCEEDED; cancelled is CANCELED, or FAILED or EXPIRED when
// the run recorded that outcome; discarded (River gave up after maxRuns
// runs that never ended) is FAILED.
package jobs
