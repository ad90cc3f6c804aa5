package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/jobs/jobstest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startFake starts a simulated backend on loopback.
func startFake(t *testing.T, st fakellm.Settings) *fakellm.Server {
	t.Helper()
	f := fakellm.New(fakellm.Config{Region: "r1", Name: "b1", Settings: st})
	if err := f.Start("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// newRouter routes to one backend at endpoint with a static limit of slots
// (0: no limit).
func newRouter(t *testing.T, endpoint string, slots int) *router.Router {
	t.Helper()
	cfg := &regions.Config{
		Regions:  []regions.Region{{Name: "r1", Backends: []regions.Backend{{Name: "b1", Endpoint: endpoint, MaxConcurrency: slots, Models: []string{"deepseek-chat"}}}}},
		Capacity: regions.CapacityPolicy{Disabled: true},
		Retry:    regions.RetryPolicy{MaxAttempts: 1},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Region: "r1", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

func fakeRouter(t *testing.T, f *fakellm.Server) *router.Router {
	return newRouter(t, "http://"+f.HTTPAddr()+"/v1", 0)
}

// open starts an engine on url for the test, with short backoffs.
func open(t *testing.T, url string, rt Router, mod ...func(*Config)) *Engine {
	t.Helper()
	cfg := Config{URL: url, Router: rt, Logger: quiet, MaxBackoff: 100 * time.Millisecond, Hold: 200 * time.Millisecond,
		WatchPoll: 20 * time.Millisecond, Discover: 100 * time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func userReq(prompt string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{{Role: "user", Content: prompt}}}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// watch follows the job until it is final and returns the states seen.
func watch(t *testing.T, e *Engine, tenant, id string) ([]detourv1.JobState, *detourv1.Job) {
	t.Helper()
	var states []detourv1.JobState
	var last *detourv1.Job
	err := e.Watch(ctxT(t), tenant, id, func(j *detourv1.Job) error {
		states = append(states, j.GetState())
		last = j
		return nil
	})
	if err != nil {
		t.Fatalf("watch %s: %v (states %v)", id, err, states)
	}
	return states, last
}

func submit(t *testing.T, e *Engine, s Submission) *detourv1.Job {
	t.Helper()
	if s.Tenant == "" {
		s.Tenant = "acme"
	}
	j, _, err := e.Submit(ctxT(t), s)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return j
}

// TestSubmitGetWatchList: a job goes queued -> (running ->) succeeded, and
// its result is the answer a Complete call gets, with its provenance.
func TestSubmitGetWatchList(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{})
		e := open(t, url, fakeRouter(t, f))
		j := submit(t, e, Submission{Request: userReq("hello jobs"), Class: detourv1.JobClass_JOB_CLASS_HIGH})
		if j.GetState() != detourv1.JobState_JOB_STATE_QUEUED || j.GetId() == "" || j.GetTenant() != "acme" {
			t.Fatalf("submitted job %v, want QUEUED with an id, tenant acme", j)
		}
		states, final := watch(t, e, "acme", j.GetId())
		if states[0] != detourv1.JobState_JOB_STATE_QUEUED && states[0] != detourv1.JobState_JOB_STATE_RUNNING && len(states) > 1 {
			t.Errorf("watch states %v, want queued or running first", states)
		}
		if final.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("final %v, want SUCCEEDED", final)
		}
		res := final.GetResult()
		if !strings.Contains(res.GetContent(), "hello jobs") || res.GetServedBy().GetBackend() != "b1" ||
			res.GetSource() != detourv1.Source_SOURCE_LIVE || res.GetAttempts() != 1 || res.GetUsage().GetTotalTokens() == 0 {
			t.Errorf("result %v, want the backend's answer with served_by b1, LIVE, 1 attempt and usage", res)
		}
		got, err := e.Get(ctxT(t), "acme", j.GetId())
		if err != nil || got.GetRequest().GetMessages()[0].GetContent() != "hello jobs" || got.GetResult().GetId() != res.GetId() ||
			got.GetClass() != detourv1.JobClass_JOB_CLASS_HIGH || got.GetFinishedAt() == nil || got.GetRuns() != 1 {
			t.Errorf("Get = %v, %v; want the request, the same result, class HIGH, finished, 1 run", got, err)
		}
		page, err := e.List(ctxT(t), "acme", []detourv1.JobState{detourv1.JobState_JOB_STATE_SUCCEEDED}, 10, "")
		if err != nil || len(page.Jobs) != 1 || page.Jobs[0].GetId() != j.GetId() || page.Next != "" {
			t.Errorf("List(succeeded) = %v, %v; want the job alone", page, err)
		}
		page, err = e.List(ctxT(t), "acme", []detourv1.JobState{detourv1.JobState_JOB_STATE_QUEUED}, 10, "")
		if err != nil || len(page.Jobs) != 0 {
			t.Errorf("List(queued) = %v, %v; want none", page, err)
		}
	})
}

// TestListPages: List pages through a tenant's jobs newest first.
func TestListPages(t *testing.T) {
	f := startFake(t, fakellm.Settings{})
	e := open(t, jobstest.SQLite(t), fakeRouter(t, f))
	var ids []string
	for i := range 5 {
		ids = append(ids, submit(t, e, Submission{Request: userReq(fmt.Sprint("page ", i))}).GetId())
	}
	var got []string
	token := ""
	for range 10 {
		p, err := e.List(ctxT(t), "acme", nil, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range p.Jobs {
			got = append(got, j.GetId())
		}
		if token = p.Next; token == "" {
			break
		}
	}
	want := []string{ids[4], ids[3], ids[2], ids[1], ids[0]}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages %v, want %v", got, want)
	}
	if _, err := e.List(ctxT(t), "acme", nil, 2, "garbage"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad page token: %v, want ErrInvalid", err)
	}
}

// TestIdempotentResubmission: the same key returns the same job, before and
// after it finished; the key with another request is refused.
func TestIdempotentResubmission(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{})
		e := open(t, url, fakeRouter(t, f))
		s := Submission{Tenant: "acme", Request: userReq("once"), Key: "order-42"}
		first, dup, err := e.Submit(ctxT(t), s)
		if err != nil || dup {
			t.Fatalf("first submit: %v, duplicate %v", err, dup)
		}
		again, dup, err := e.Submit(ctxT(t), s)
		if err != nil || !dup || again.GetId() != first.GetId() {
			t.Fatalf("resubmit: %v (duplicate %v), id %s; want the first job %s", err, dup, again.GetId(), first.GetId())
		}
		_, final := watch(t, e, "acme", first.GetId())
		after, dup, err := e.Submit(ctxT(t), s)
		if err != nil || !dup || after.GetId() != first.GetId() || after.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED ||
			after.GetResult().GetId() != final.GetResult().GetId() {
			t.Errorf("resubmit after it finished: %v, %v; want the same succeeded job and result", after, err)
		}
		if st := f.Stats(); st.Total != 1 {
			t.Errorf("%d upstream calls for one job submitted three times, want 1", st.Total)
		}
		if _, _, err := e.Submit(ctxT(t), Submission{Tenant: "acme", Request: userReq("another"), Key: "order-42"}); !errors.Is(err, ErrKeyReused) {
			t.Errorf("same key, other request: %v, want ErrKeyReused", err)
		}
		other, dup, err := e.Submit(ctxT(t), Submission{Tenant: "other", Request: userReq("once"), Key: "order-42"})
		if err != nil || dup || other.GetId() == first.GetId() {
			t.Errorf("another tenant's same key: %v, duplicate %v; want a job of its own", err, dup)
		}
	})
}

// TestTenantIsolation: another tenant's job is not found by Get, Watch,
// Cancel or List.
func TestTenantIsolation(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{Latency: time.Hour}) // stays running
		e := open(t, url, fakeRouter(t, f))
		j := submit(t, e, Submission{Tenant: "acme", Request: userReq("mine")})
		ctx := ctxT(t)
		if _, err := e.Get(ctx, "globex", j.GetId()); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get by another tenant: %v, want ErrNotFound", err)
		}
		if _, err := e.Cancel(ctx, "globex", j.GetId()); !errors.Is(err, ErrNotFound) {
			t.Errorf("Cancel by another tenant: %v, want ErrNotFound", err)
		}
		if err := e.Watch(ctx, "globex", j.GetId(), func(*detourv1.Job) error { return nil }); !errors.Is(err, ErrNotFound) {
			t.Errorf("Watch by another tenant: %v, want ErrNotFound", err)
		}
		if p, err := e.List(ctx, "globex", nil, 10, ""); err != nil || len(p.Jobs) != 0 {
			t.Errorf("List by another tenant: %v, %v; want nothing", p, err)
		}
		for _, id := range []string{"0", "-1", "x", "99999"} {
			if _, err := e.Get(ctx, "acme", id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q): %v, want ErrNotFound", id, err)
			}
		}
		if got, err := e.Get(ctx, "", j.GetId()); err != nil || got.GetTenant() != "acme" {
			t.Errorf("Get for any tenant (an admin): %v, %v", got, err)
		}
		if _, err := e.Cancel(ctx, "acme", j.GetId()); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCancelStopsTheUpstreamCall: cancelling a running job cancels its
// upstream call in flight.
func TestCancelStopsTheUpstreamCall(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{HangRate: 1})
		e := open(t, url, fakeRouter(t, f))
		j := submit(t, e, Submission{Request: userReq("never answered")})
		testkit.Until(t, 10*time.Second, "the upstream call to start", func() bool { return f.Stats().InFlight == 1 })
		got, err := e.Cancel(ctxT(t), "acme", j.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if s := got.GetState(); s != detourv1.JobState_JOB_STATE_RUNNING && s != detourv1.JobState_JOB_STATE_CANCELED {
			t.Errorf("Cancel returned %v, want RUNNING (stopping) or CANCELED", s)
		}
		_, final := watch(t, e, "acme", j.GetId())
		if final.GetState() != detourv1.JobState_JOB_STATE_CANCELED {
			t.Errorf("final %v, want CANCELED", final)
		}
		testkit.Until(t, 10*time.Second, "the upstream call to be cancelled", func() bool { return f.Stats().InFlight == 0 })
	})
}

// TestBusyAnswersReschedule: busy answers put the job back with a backoff
// (it stays queued, never fails), and it succeeds once the backend answers.
func TestBusyAnswersReschedule(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{BusyRate: 1})
		e := open(t, url, fakeRouter(t, f))
		j := submit(t, e, Submission{Request: userReq("busy")})
		testkit.Until(t, 10*time.Second, "two busy answers", func() bool { return f.Stats().Busy >= 2 })
		got, err := e.Get(ctxT(t), "acme", j.GetId())
		if err != nil || final(got.GetState()) {
			t.Fatalf("after busy answers: %v, %v; want the job still queued or running", got, err)
		}
		if got.GetRuns() > 1 {
			t.Errorf("%d runs after busy answers, want at most 1: a busy answer does not use a run", got.GetRuns())
		}
		f.SetSettings(fakellm.Settings{})
		_, fin := watch(t, e, "acme", j.GetId())
		if fin.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("final %v, want SUCCEEDED", fin)
		}
	})
}

// TestExpiry: a job not answered by its not_after ends EXPIRED with
// DEADLINE_EXCEEDED and its upstream call is cancelled; a not_after in the
// past is refused.
func TestExpiry(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, url string) {
		f := startFake(t, fakellm.Settings{HangRate: 1})
		e := open(t, url, fakeRouter(t, f))
		j := submit(t, e, Submission{Request: userReq("too late"), NotAfter: time.Now().Add(500 * time.Millisecond)})
		_, fin := watch(t, e, "acme", j.GetId())
		if fin.GetState() != detourv1.JobState_JOB_STATE_EXPIRED || codes.Code(fin.GetError().GetCode()) != codes.DeadlineExceeded {
			t.Errorf("final %v, want EXPIRED with DEADLINE_EXCEEDED", fin)
		}
		testkit.Until(t, 10*time.Second, "the upstream call to be cancelled", func() bool { return f.Stats().InFlight == 0 })
		_, _, err := e.Submit(ctxT(t), Submission{Tenant: "acme", Request: userReq("past"), NotAfter: time.Now().Add(-time.Second)})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("not_after in the past: %v, want ErrInvalid", err)
		}
	})
}

// TestFailureCarriesTheStatus: a request the upstream rejects fails the job
// with the status a Complete call gets (here through status.Convert: the
// server passes its own table as Config.Status).
func TestFailureCarriesTheStatus(t *testing.T) {
	f := startFake(t, fakellm.Settings{})
	rt := fakeRouter(t, f)
	e := open(t, jobstest.SQLite(t), rt, func(c *Config) {
		c.Status = func(err error) *status.Status { return status.New(codes.NotFound, err.Error()) }
	})
	j := submit(t, e, Submission{Request: &detourv1.CompleteRequest{Model: "no-such-model", Messages: userReq("x").GetMessages()}})
	_, fin := watch(t, e, "acme", j.GetId())
	if fin.GetState() != detourv1.JobState_JOB_STATE_FAILED || codes.Code(fin.GetError().GetCode()) != codes.NotFound ||
		!strings.Contains(fin.GetError().GetMessage(), "no-such-model") {
		t.Errorf("final %v, want FAILED with the status of the routing error", fin)
	}
	if f.Stats().Total != 0 {
		t.Errorf("upstream calls for an unknown model")
	}
}

// TestTooManyQueued: a tenant at its limit of unfinished jobs is refused;
// another tenant is not.
func TestTooManyQueued(t *testing.T) {
	f := startFake(t, fakellm.Settings{HangRate: 1})
	e := open(t, jobstest.SQLite(t), fakeRouter(t, f), func(c *Config) { c.MaxQueued = 3 })
	for i := range 3 {
		submit(t, e, Submission{Request: userReq(fmt.Sprint("q", i))})
	}
	if _, _, err := e.Submit(ctxT(t), Submission{Tenant: "acme", Request: userReq("q3")}); !errors.Is(err, ErrTooMany) {
		t.Errorf("fourth job: %v, want ErrTooMany", err)
	}
	submit(t, e, Submission{Tenant: "globex", Request: userReq("other tenant")})
}

// upstream is an OpenAI-compatible backend on loopback that answers a
// request whose prompt starts with "slow" only once released (or never,
// until the caller goes away), and any other at once.
type upstream struct {
	srv     *http.Server
	addr    string
	release chan struct{}
	slow    atomic.Int64 // slow requests in flight
	fast    atomic.Int64 // fast requests answered
	mu      sync.Mutex
	max     int64 // most slow requests in flight at once
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{release: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = lis.Addr().String()
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve)}
	go u.srv.Serve(lis)
	t.Cleanup(func() { u.srv.Close() })
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Messages []struct{ Content string } `json:"messages"`
	}
	json.NewDecoder(r.Body).Decode(&body)
	prompt := ""
	if n := len(body.Messages); n > 0 {
		prompt = body.Messages[n-1].Content
	}
	if strings.HasPrefix(prompt, "slow") {
		n := u.slow.Add(1)
		u.mu.Lock()
		u.max = max(u.max, n)
		u.mu.Unlock()
		defer u.slow.Add(-1)
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
	} else {
		u.fast.Add(1)
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"x","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"re: %s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, prompt)
}

func (u *upstream) maxSlow() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.max
}

// TestJobsUseOnlySpareCapacity: with a backend of 4 slots and a reserve of
// half, jobs hold at most 2 at once whatever their number; interactive
// calls get the reserved slots, and one that finds none takes a job's slot
// (the job is put back): no interactive call waits for a job's upstream
// call, which here would never end.
func TestJobsUseOnlySpareCapacity(t *testing.T) {
	u := startUpstream(t)
	rt := newRouter(t, "http://"+u.addr+"/v1", 4)
	e := open(t, jobstest.SQLite(t), rt, func(c *Config) { c.Reserve = 0.5 })
	var ids []string
	for i := range 6 {
		ids = append(ids, submit(t, e, Submission{Request: userReq(fmt.Sprint("slow job ", i))}).GetId())
	}
	testkit.Until(t, 10*time.Second, "jobs to take the spare slots", func() bool { return u.slow.Load() == 2 })
	// Two interactive calls hold the two reserved slots, a third finds no
	// room: it preempts a job. All three hang upstream ("slow"), but each
	// gets its upstream call at once.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { rt.Complete(ctx, userReq(fmt.Sprint("slow interactive ", i))) })
	}
	testkit.Until(t, 10*time.Second, "every interactive call to reach the upstream", func() bool {
		return u.slow.Load() == 4 && rt.Backends()[0].Capacity.InFlight == 4
	})
	// A fast interactive call now finds every slot taken by interactive
	// calls but one job: it takes the job's slot too.
	resp, err := rt.Complete(ctxT(t), userReq("fast interactive"))
	if err != nil || resp.GetContent() != "re: fast interactive" {
		t.Fatalf("interactive call with the spare slots taken by jobs: %v, %v", resp, err)
	}
	if b := rt.Backends()[0]; b.Capacity.Queued != 0 {
		t.Errorf("%d calls queued for a slot", b.Capacity.Queued)
	}
	if m := u.maxSlow(); m > 4 {
		t.Errorf("%d slow calls at once upstream, more than the 4 slots", m)
	}
	cancel()
	wg.Wait()
	close(u.release) // the jobs may finish now
	for _, id := range ids {
		if _, fin := watch(t, e, "acme", id); fin.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s: %v, want SUCCEEDED once the backend answers", id, fin)
		}
	}
}

// TestTenantsTakeTurns: a tenant's jobs submitted behind another tenant's
// backlog are answered long before the backlog is.
func TestTenantsTakeTurns(t *testing.T) {
	u := startUpstream(t) // holds every "slow" call until released
	rt := newRouter(t, "http://"+u.addr+"/v1", 2)
	e := open(t, jobstest.SQLite(t), rt, func(c *Config) { c.Reserve = 0.01; c.Workers = 4 })
	const backlog = 100
	for i := range backlog {
		submit(t, e, Submission{Tenant: "big", Request: userReq(fmt.Sprint("slow big ", i))})
	}
	var few []string
	for i := range 5 {
		few = append(few, submit(t, e, Submission{Tenant: "small", Request: userReq(fmt.Sprint("slow small ", i))}).GetId())
	}
	close(u.release) // the backend answers from now on
	for _, id := range few {
		if _, fin := watch(t, e, "small", id); fin.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("small job %s: %v", id, fin)
		}
	}
	p, err := e.List(ctxT(t), "big", []detourv1.JobState{detourv1.JobState_JOB_STATE_SUCCEEDED}, maxPage, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d of the big tenant's jobs answered before the small tenant's 5", len(p.Jobs))
	if done := len(p.Jobs); done > backlog/2 {
		t.Errorf("%d of the big tenant's %d jobs were answered before the small tenant's 5: want the small ones served in turn", done, backlog)
	}
}

// TestGateTakesTenantsInTurn: with one spare slot at a time, waiting runs
// go one tenant after the other, not first come first served.
func TestGateTakesTenantsInTurn(t *testing.T) {
	var spare atomic.Int64
	g := newGate(func(string) int { return int(spare.Swap(0)) })
	defer g.close()
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	waiting := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		n := 0
		for _, l := range g.lines {
			n += len(l)
		}
		return n
	}
	enqueue := func(tenant string, n int) {
		for range n {
			before := waiting()
			wg.Go(func() {
				if g.wait(context.Background(), tenant, "m", time.Minute) {
					mu.Lock()
					order = append(order, tenant)
					mu.Unlock()
				}
			})
			testkit.Until(t, 10*time.Second, "a run to wait", func() bool { return waiting() == before+1 })
		}
	}
	enqueue("big", 20)
	enqueue("small", 2)
	for i := range 22 {
		spare.Store(1)
		testkit.Until(t, 10*time.Second, "a run to go", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(order) == i+1
		})
	}
	wg.Wait()
	small := 0
	for _, tnt := range order[:4] {
		if tnt == "small" {
			small++
		}
	}
	if small != 2 {
		t.Errorf("release order %v: want both small runs among the first 4", order)
	}
}
