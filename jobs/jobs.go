package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/router"
)

// Errors callers tell apart; server/ maps them to gRPC codes.
var (
	// ErrNotFound: no such job for this tenant (another tenant's job too).
	ErrNotFound = errors.New("job not found")
	// ErrKeyReused: the idempotency key names a job with another request.
	ErrKeyReused = errors.New("idempotency key already used for a different request")
	// ErrTooMany: the tenant has its limit of unfinished jobs.
	ErrTooMany = errors.New("tenant has too many unfinished jobs")
	// ErrInvalid: the submission is malformed (a bad not_after, key or page
	// token); the error says what.
	ErrInvalid = errors.New("invalid job request")
)

// Router runs a job's call; *router.Router implements it.
type Router interface {
	// Complete runs the call; the engine marks ctx with router.WithBackground.
	Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error)
	// Spare says how many background calls for model could start now.
	Spare(model string, bg router.Background) int
	// Serves says whether a backend serves model.
	Serves(model string) bool
}

var _ Router = (*router.Router)(nil)

// Config configures an Engine. Zero fields take the defaults named.
type Config struct {
	// URL is the database: postgres://… for a fleet, sqlite:PATH for one
	// replica. Required.
	URL string
	// Router runs the jobs. Required.
	Router Router
	// Status converts a routing error into the gRPC status a Complete call
	// would have returned (server.JobStatus); a failed job records it. Nil
	// uses status.Convert.
	Status func(error) *status.Status
	// Logger receives the engine's and River's warnings. Nil uses
	// slog.Default().
	Logger *slog.Logger
	// Metrics records the job metrics. Nil records nothing.
	Metrics *metrics.Metrics
	// Retention is how long a finished job (and its answer) is kept; an
	// idempotency key names its job for as long. Zero means 24h.
	Retention time.Duration
	// Workers is the jobs of one tenant a replica holds at once (waiting
	// for spare capacity or calling upstream). Zero means 16.
	Workers int
	// MaxQueued is the most unfinished jobs a tenant may have; Submit
	// refuses more with ErrTooMany. Zero means 100000.
	MaxQueued int
	// MaxAge is a job's not_after when the submission sets none. Zero means
	// 24h.
	MaxAge time.Duration
	// AttemptTimeout bounds one run of a job (its wait for spare capacity
	// and its upstream call). Zero means 5m.
	AttemptTimeout time.Duration
	// RescueAfter is how long a job may stay running before it is run again
	// elsewhere (its replica died). It must exceed AttemptTimeout. Zero
	// means AttemptTimeout + 1m.
	RescueAfter time.Duration
	// Hold is how long a run waits in its replica for spare capacity before
	// the job is put back in the queue with a backoff. Zero means 1s.
	Hold time.Duration
	// MaxBackoff bounds the wait of a job put back after a busy answer or
	// no spare capacity (it grows from 500ms, with jitter). Zero means 30s.
	MaxBackoff time.Duration
	// Reserve is the share of each backend's capacity kept for interactive
	// calls (router.Background.Reserve). Zero means router.DefaultReserve.
	Reserve float64
	// WatchPoll is how often a Watch reads its job when this replica saw
	// no change. Zero means 500ms.
	WatchPoll time.Duration
	// Discover is how often the replica looks for tenants with unfinished
	// jobs that it does not work on yet (another replica took their
	// submission). Zero means 2s.
	Discover time.Duration
	// ID names this replica's River client (unique per process). Empty
	// lets River make one from the host name and the time.
	ID string
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Status == nil {
		c.Status = status.Convert
	}
	c.Retention = orDur(c.Retention, 24*time.Hour)
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 100000
	}
	c.MaxAge = orDur(c.MaxAge, 24*time.Hour)
	c.AttemptTimeout = orDur(c.AttemptTimeout, 5*time.Minute)
	c.RescueAfter = orDur(c.RescueAfter, c.AttemptTimeout+time.Minute)
	c.Hold = orDur(c.Hold, time.Second)
	c.MaxBackoff = orDur(c.MaxBackoff, 30*time.Second)
	c.WatchPoll = orDur(c.WatchPoll, 500*time.Millisecond)
	c.Discover = orDur(c.Discover, 2*time.Second)
}

func orDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Engine runs asynchronous Complete calls on River. It is safe for
// concurrent use. Submit, Get, Cancel and List make a few database calls;
// Watch blocks until its job is final or ctx ends; Close stops the workers
// (a job in flight is put back for another replica) and waits for them.
type Engine struct {
	cfg    Config
	log    *slog.Logger
	st     *store
	gate   *gate
	queues *queues
	counts *counts
	hub    *hub

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Open connects to the database, migrates River's tables, and starts this
// replica's workers.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Router == nil {
		return nil, errors.New("jobs: Config.Router is required")
	}
	cfg.defaults()
	if cfg.RescueAfter <= cfg.AttemptTimeout {
		return nil, fmt.Errorf("jobs: rescue after (%v) must exceed the attempt timeout (%v)", cfg.RescueAfter, cfg.AttemptTimeout)
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, done: make(chan struct{})}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &worker{e: e}); err != nil {
		return nil, err
	}
	rc := &river.Config{
		ID:                          cfg.ID,
		Logger:                      slog.New(warnOnly{cfg.Logger.Handler()}),
		Workers:                     workers,
		Queues:                      map[string]river.QueueConfig{queueOf(auth.DefaultTenant): {MaxWorkers: cfg.Workers}},
		JobTimeout:                  cfg.AttemptTimeout,
		RescueStuckJobsAfter:        cfg.RescueAfter,
		MaxAttempts:                 maxRuns,
		RetryPolicy:                 retryPolicy{max: cfg.MaxBackoff},
		CompletedJobRetentionPeriod: cfg.Retention,
		CancelledJobRetentionPeriod: cfg.Retention,
		DiscardedJobRetentionPeriod: cfg.Retention,
	}
	st, err := openStore(ctx, cfg.URL, rc, slog.New(warnOnly{cfg.Logger.Handler()}))
	if err != nil {
		return nil, err
	}
	e.st = st
	e.gate = newGate(func(model string) int {
		return cfg.Router.Spare(model, router.Background{Reserve: cfg.Reserve})
	})
	e.queues = newQueues(st, cfg.Workers, cfg.Logger)
	e.counts = newCounts(st)
	e.hub = newHub()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	if err := st.client.Start(runCtx); err != nil {
		cancel()
		e.gate.close()
		st.close()
		return nil, fmt.Errorf("jobs: start workers: %w", err)
	}
	e.queues.added(queueOf(auth.DefaultTenant))
	events, unsubscribe := st.client.Subscribe(river.EventKindJobCompleted, river.EventKindJobCancelled,
		river.EventKindJobFailed, river.EventKindJobSnoozed)
	go func() {
		defer close(e.done)
		defer unsubscribe()
		e.queues.discover(runCtx) // before the first Submit may need it
		tick := time.NewTicker(cfg.Discover)
		defer tick.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				if ev.Job != nil {
					e.hub.notify(ev.Job.ID)
				}
			case <-tick.C:
				e.queues.discover(runCtx)
				e.queues.retire(runCtx, time.Minute)
			}
		}
	}()
	cfg.Metrics.JobsSource(e.counts.metrics)
	return e, nil
}

// Close stops the workers, putting jobs in flight back in the queue, and
// closes the database. It waits for the workers.
func (e *Engine) Close() error {
	e.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Jobs in flight see their context end, put themselves back (see
		// worker.Work) and return at once.
		if err := e.st.client.StopAndCancel(ctx); err != nil {
			e.log.Warn("jobs: workers did not stop in time", "err", err)
		}
		e.cancel()
		<-e.done
		e.gate.close()
		e.st.close()
	})
	return nil
}

// Class is a job's priority class; River's priority is its number.
type Class = detourv1.JobClass

func priorityOf(c Class) int {
	switch c {
	case detourv1.JobClass_JOB_CLASS_HIGH:
		return 1
	case detourv1.JobClass_JOB_CLASS_LOW:
		return 3
	}
	return 2
}

func classOf(priority int) Class {
	switch priority {
	case 1:
		return detourv1.JobClass_JOB_CLASS_HIGH
	case 3:
		return detourv1.JobClass_JOB_CLASS_LOW
	}
	return detourv1.JobClass_JOB_CLASS_NORMAL
}

// classLabel is a class as a metrics label: high, normal, low.
func classLabel(priority int) string {
	switch priority {
	case 1:
		return "high"
	case 3:
		return "low"
	}
	return "normal"
}

// Submission is one Submit.
type Submission struct {
	Tenant   string
	Request  *detourv1.CompleteRequest
	Key      string // idempotency key; empty: none
	Class    Class
	NotAfter time.Time // zero: MaxAge from now
}

// maxKeyBytes bounds an idempotency key.
const maxKeyBytes = 128

// Submit queues a job for s.Tenant and returns it. A submission whose key
// names an existing job of the tenant returns that job (ErrKeyReused when
// its request differs), and reports true.
func (e *Engine) Submit(ctx context.Context, s Submission) (*detourv1.Job, bool, error) {
	now := time.Now()
	if len(s.Key) > maxKeyBytes {
		return nil, false, fmt.Errorf("%w: idempotency_key is longer than %d bytes", ErrInvalid, maxKeyBytes)
	}
	if s.NotAfter.IsZero() {
		s.NotAfter = now.Add(e.cfg.MaxAge)
	} else if !s.NotAfter.After(now) {
		return nil, false, fmt.Errorf("%w: not_after %s has passed", ErrInvalid, s.NotAfter.UTC().Format(time.RFC3339))
	}
	prio := priorityOf(s.Class)
	class := classLabel(prio)
	req, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.Request)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if n := e.counts.unfinished(ctx, s.Tenant); n >= e.cfg.MaxQueued {
		e.cfg.Metrics.JobSubmitted(class, "refused")
		return nil, false, fmt.Errorf("%w: %d of at most %d", ErrTooMany, n, e.cfg.MaxQueued)
	}
	sum := sha256.Sum256(req)
	a := args{Tenant: s.Tenant, Key: s.Key, Request: req, Digest: hex.EncodeToString(sum[:16]), NotAfter: s.NotAfter.UTC()}
	q := queueOf(s.Tenant)
	opts := &river.InsertOpts{Queue: q, Priority: prio}
	if s.Key != "" {
		// River keeps one job per (kind, tenant, key) in any state, until the
		// job is deleted at the end of its retention.
		opts.UniqueOpts = river.UniqueOpts{ByArgs: true, ByState: rivertype.JobStates()}
	}
	res, err := e.st.client.Insert(ctx, a, opts)
	if err != nil {
		return nil, false, fmt.Errorf("jobs: insert: %w", err)
	}
	if res.UniqueSkippedAsDuplicate {
		e.cfg.Metrics.JobSubmitted(class, "duplicate")
		old, err := decodeArgs(res.Job)
		if err != nil {
			return nil, true, err
		}
		if old.Digest != a.Digest {
			return nil, true, ErrKeyReused
		}
		return e.view(res.Job, false), true, nil
	}
	e.counts.submitted(s.Tenant)
	e.cfg.Metrics.JobSubmitted(class, "created")
	e.queues.ensure(q)
	return e.view(res.Job, false), false, nil
}

// parseID reads a job id.
func parseID(id string) (int64, bool) {
	n, err := strconv.ParseInt(id, 10, 64)
	return n, err == nil && n > 0
}

// row returns the job id of tenant, or ErrNotFound.
func (e *Engine) row(ctx context.Context, tenant, id string) (*rivertype.JobRow, error) {
	n, ok := parseID(id)
	if !ok {
		return nil, ErrNotFound
	}
	r, err := e.st.client.JobGet(ctx, n)
	if errors.Is(err, rivertype.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("jobs: get %d: %w", n, err)
	}
	a, err := decodeArgs(r)
	if err != nil || r.Kind != kindComplete || (tenant != "" && a.Tenant != tenant) {
		return nil, ErrNotFound
	}
	return r, nil
}

// Get returns the job id of tenant ("" for any tenant: admins), with its
// request and outcome.
func (e *Engine) Get(ctx context.Context, tenant, id string) (*detourv1.Job, error) {
	r, err := e.row(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	return e.view(r, true), nil
}

// Cancel cancels the job id of tenant ("" for any): a queued job at once, a
// running one as soon as its replica hears of it (its upstream call is
// cancelled). A finished job is returned unchanged.
func (e *Engine) Cancel(ctx context.Context, tenant, id string) (*detourv1.Job, error) {
	r, err := e.row(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	before := r.State
	r, err = e.st.client.JobCancel(ctx, r.ID)
	if errors.Is(err, rivertype.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("jobs: cancel %d: %w", r.ID, err)
	}
	if before != rivertype.JobStateCancelled && r.State == rivertype.JobStateCancelled {
		e.cfg.Metrics.JobFinished(classLabel(r.Priority), "canceled")
	}
	e.hub.notify(r.ID)
	return e.view(r, true), nil
}

// Watch calls send with the job now, then each time its state changes,
// until it is final (nil) or ctx ends (ctx's error) or send fails.
func (e *Engine) Watch(ctx context.Context, tenant, id string, send func(*detourv1.Job) error) error {
	r, err := e.row(ctx, tenant, id)
	if err != nil {
		return err
	}
	changed, stop := e.hub.subscribe(r.ID)
	defer stop()
	tick := time.NewTicker(e.cfg.WatchPoll)
	defer tick.Stop()
	var last *detourv1.Job
	for {
		j := e.view(r, last == nil)
		if last == nil || j.GetState() != last.GetState() || j.GetRuns() != last.GetRuns() {
			if err := send(j); err != nil {
				return err
			}
			last = j
		}
		if final(j.GetState()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-tick.C:
		}
		if r, err = e.st.client.JobGet(ctx, r.ID); err != nil {
			if errors.Is(err, rivertype.ErrNotFound) {
				return ErrNotFound // deleted at the end of its retention
			}
			return fmt.Errorf("jobs: get %d: %w", r.ID, err)
		}
	}
}

// Page is a page of List.
type Page struct {
	Jobs []*detourv1.Job
	Next string // token of the next page; empty on the last
}

// maxPage bounds a page of List.
const maxPage = 500

// List returns tenant's jobs ("" for every tenant: admins), newest first,
// in states (none: all), a page of at most size after token.
func (e *Engine) List(ctx context.Context, tenant string, states []detourv1.JobState, size int, token string) (*Page, error) {
	if size <= 0 {
		size = 50
	}
	size = min(size, maxPage)
	p := river.NewJobListParams().Kinds(kindComplete).OrderBy(river.JobListOrderByID, river.SortOrderDesc).First(size)
	if tenant != "" {
		p = p.Queues(queueOf(tenant))
	}
	if rs := riverStates(states); len(rs) > 0 {
		p = p.States(rs...)
	}
	if token != "" {
		var c river.JobListCursor
		if err := c.UnmarshalText([]byte(token)); err != nil {
			return nil, fmt.Errorf("%w: page_token is not one List returned", ErrInvalid)
		}
		p = p.After(&c)
	}
	res, err := e.st.client.JobList(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("jobs: list: %w", err)
	}
	want := map[detourv1.JobState]bool{}
	for _, s := range states {
		want[s] = true
	}
	out := &Page{}
	for _, r := range res.Jobs {
		a, err := decodeArgs(r)
		if err != nil || (tenant != "" && a.Tenant != tenant) {
			continue
		}
		j := e.view(r, false)
		if len(want) == 0 || want[j.GetState()] {
			out.Jobs = append(out.Jobs, j)
		}
	}
	if len(res.Jobs) == size && res.LastCursor != nil {
		b, err := res.LastCursor.MarshalText()
		if err == nil {
			out.Next = string(b)
		}
	}
	return out, nil
}

// riverStates are the River states that may hold jobs in one of states.
func riverStates(states []detourv1.JobState) []rivertype.JobState {
	set := map[rivertype.JobState]bool{}
	queued := []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStateScheduled, rivertype.JobStateRetryable, rivertype.JobStatePending}
	for _, s := range states {
		var add []rivertype.JobState
		switch s {
		case detourv1.JobState_JOB_STATE_QUEUED:
			add = queued
		case detourv1.JobState_JOB_STATE_RUNNING:
			add = []rivertype.JobState{rivertype.JobStateRunning}
		case detourv1.JobState_JOB_STATE_SUCCEEDED:
			add = []rivertype.JobState{rivertype.JobStateCompleted}
		case detourv1.JobState_JOB_STATE_FAILED:
			add = []rivertype.JobState{rivertype.JobStateDiscarded, rivertype.JobStateCancelled}
		case detourv1.JobState_JOB_STATE_CANCELED:
			add = []rivertype.JobState{rivertype.JobStateCancelled}
		case detourv1.JobState_JOB_STATE_EXPIRED:
			add = append([]rivertype.JobState{rivertype.JobStateCancelled}, queued...)
		}
		for _, r := range add {
			set[r] = true
		}
	}
	out := make([]rivertype.JobState, 0, len(set))
	for _, r := range rivertype.JobStates() {
		if set[r] {
			out = append(out, r)
		}
	}
	return out
}

// warnOnly passes River's warnings and errors to the engine's logger, not
// its routine information.
type warnOnly struct{ slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}

func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler { return warnOnly{w.Handler.WithAttrs(as)} }
func (w warnOnly) WithGroup(n string) slog.Handler       { return warnOnly{w.Handler.WithGroup(n)} }
