package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/jobs"
	"github.com/detour-dev/detour/jobs/jobstest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// jobsStack is a server with the Router and Jobs services over one
// backend at endpoint, on loopback.
type jobsStack struct {
	router detourv1.RouterClient
	jobs   detourv1.JobsClient
}

func startJobsStack(t *testing.T, endpoint, dbURL string) *jobsStack {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: endpoint, Models: []string{"deepseek-chat"}}}}},
		Retry: regions.RetryPolicy{MaxAttempts: 1}}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Region: "a", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng, err := jobs.Open(ctx, jobs.Config{URL: dbURL, Router: rt, Status: JobStatus(log), Logger: log, WatchPoll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s := New(rt, Options{Logger: log})
	s.ServeJobs(eng)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Shutdown(context.Background())
		eng.Close()
	})
	return &jobsStack{router: detourv1.NewRouterClient(conn), jobs: detourv1.NewJobsClient(conn)}
}

func asTenant(t *testing.T, tenant string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, auth.TenantKey, tenant)
}

func jobReq(prompt string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{{Role: "user", Content: prompt}}}
}

// watchJob follows a job over the Watch stream and returns its messages.
func watchJob(t *testing.T, c detourv1.JobsClient, ctx context.Context, id string) []*detourv1.Job {
	t.Helper()
	st, err := c.Watch(ctx, &detourv1.WatchJobRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	var out []*detourv1.Job
	for {
		j, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("watch %s: %v after %d messages", id, err, len(out))
		}
		out = append(out, j)
	}
}

// TestJobsService: submit, watch to the answer, get, list; another tenant
// sees NOT_FOUND; bad submissions are INVALID_ARGUMENT with field
// violations, an unserved model NOT_FOUND.
func TestJobsService(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, dbURL string) {
		f := fakellm.New(fakellm.Config{Region: "a", Name: "a-1"})
		if err := f.Start("127.0.0.1:0", ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		st := startJobsStack(t, "http://"+f.HTTPAddr()+"/v1", dbURL)
		acme := asTenant(t, "acme")
		job, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: jobReq("async hello"), IdempotencyKey: "k1"})
		if err != nil {
			t.Fatal(err)
		}
		msgs := watchJob(t, st.jobs, acme, job.GetId())
		last := msgs[len(msgs)-1]
		if last.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED || !strings.Contains(last.GetResult().GetContent(), "async hello") ||
			last.GetResult().GetServedBy().GetBackend() != "a-1" {
			t.Fatalf("watch ended with %v, want SUCCEEDED with the answer of a-1", last)
		}
		for i, m := range msgs[:len(msgs)-1] {
			if m.GetState() != detourv1.JobState_JOB_STATE_QUEUED && m.GetState() != detourv1.JobState_JOB_STATE_RUNNING {
				t.Errorf("watch message %d: %v before the final one", i, m.GetState())
			}
		}
		again, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: jobReq("async hello"), IdempotencyKey: "k1"})
		if err != nil || again.GetId() != job.GetId() {
			t.Errorf("resubmission with the key: %v, %v; want job %s", again, err, job.GetId())
		}
		if _, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: jobReq("other"), IdempotencyKey: "k1"}); status.Code(err) != codes.AlreadyExists {
			t.Errorf("key reused for another request: %v, want ALREADY_EXISTS", err)
		}
		got, err := st.jobs.Get(acme, &detourv1.GetJobRequest{Id: job.GetId()})
		if err != nil || got.GetResult().GetId() != last.GetResult().GetId() {
			t.Errorf("Get: %v, %v", got, err)
		}
		list, err := st.jobs.List(acme, &detourv1.ListJobsRequest{States: []detourv1.JobState{detourv1.JobState_JOB_STATE_SUCCEEDED}})
		if err != nil || len(list.GetJobs()) != 1 {
			t.Errorf("List: %v, %v", list, err)
		}
		globex := asTenant(t, "globex")
		if _, err := st.jobs.Get(globex, &detourv1.GetJobRequest{Id: job.GetId()}); status.Code(err) != codes.NotFound {
			t.Errorf("Get by another tenant: %v, want NOT_FOUND", err)
		}
		if _, err := st.jobs.Cancel(globex, &detourv1.CancelJobRequest{Id: job.GetId()}); status.Code(err) != codes.NotFound {
			t.Errorf("Cancel by another tenant: %v, want NOT_FOUND", err)
		}
		if _, err := st.jobs.Get(globex, &detourv1.GetJobRequest{Id: job.GetId(), Tenant: "acme"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("Get naming another tenant, not an admin: %v, want PERMISSION_DENIED", err)
		}
		w, err := st.jobs.Watch(globex, &detourv1.WatchJobRequest{Id: job.GetId()})
		if err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.NotFound {
			t.Errorf("Watch by another tenant: %v, want NOT_FOUND", err)
		}
		if l, err := st.jobs.List(globex, &detourv1.ListJobsRequest{}); err != nil || len(l.GetJobs()) != 0 {
			t.Errorf("List by another tenant: %v, %v; want none", l, err)
		}

		_, err = st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: &detourv1.CompleteRequest{Model: "deepseek-chat"}})
		var fields []string
		for _, d := range status.Convert(err).Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if status.Code(err) != codes.InvalidArgument || len(fields) != 1 || fields[0] != "request.messages" {
			t.Errorf("submission without messages: %v, fields %v; want INVALID_ARGUMENT on request.messages", err, fields)
		}
		if _, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("submission without a request: %v, want INVALID_ARGUMENT", err)
		}
		if _, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: &detourv1.CompleteRequest{Model: "gpt-x", Messages: jobReq("x").GetMessages()}}); status.Code(err) != codes.NotFound {
			t.Errorf("submission for a model no backend serves: %v, want NOT_FOUND", err)
		}
	})
}

// TestJobFailureIsTheCompleteStatus: a job the upstream rejects fails with
// the status a Complete call of the same request returns.
func TestJobFailureIsTheCompleteStatus(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"message":"this prompt is not allowed","type":"invalid_request_error"}}`)
	})}
	go hs.Serve(lis)
	defer hs.Close()
	st := startJobsStack(t, "http://"+lis.Addr().String()+"/v1", jobstest.SQLite(t))
	ctx := asTenant(t, "acme")
	_, callErr := st.router.Complete(ctx, jobReq("refused"))
	want := status.Convert(callErr)
	if want.Code() != codes.InvalidArgument {
		t.Fatalf("Complete: %v, want INVALID_ARGUMENT", callErr)
	}
	job, err := st.jobs.Submit(ctx, &detourv1.SubmitRequest{Request: jobReq("refused")})
	if err != nil {
		t.Fatal(err)
	}
	msgs := watchJob(t, st.jobs, ctx, job.GetId())
	last := msgs[len(msgs)-1]
	if last.GetState() != detourv1.JobState_JOB_STATE_FAILED || codes.Code(last.GetError().GetCode()) != want.Code() ||
		last.GetError().GetMessage() != want.Message() {
		t.Errorf("job ended %v, want FAILED with %v", last, want.Proto())
	}
}

// TestJobCancelOverGRPC: Jobs/Cancel of a running job, over real gRPC,
// cancels its upstream call in flight at the backend, and the job (and a
// Watch opened before the cancel) ends CANCELED, its call made once.
func TestJobCancelOverGRPC(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, dbURL string) {
		f := fakellm.New(fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{HangRate: 1}})
		if err := f.Start("127.0.0.1:0", ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		st := startJobsStack(t, "http://"+f.HTTPAddr()+"/v1", dbURL)
		acme := asTenant(t, "acme")
		job, err := st.jobs.Submit(acme, &detourv1.SubmitRequest{Request: jobReq("never answered")})
		if err != nil {
			t.Fatal(err)
		}
		testkit.Until(t, 10*time.Second, "the job's upstream call to start", func() bool { return f.Stats().InFlight == 1 })
		w, err := st.jobs.Watch(acme, &detourv1.WatchJobRequest{Id: job.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		first, err := w.Recv()
		if err != nil || first.GetState() != detourv1.JobState_JOB_STATE_RUNNING {
			t.Fatalf("watch's first message: %v, %v; want RUNNING (its upstream call is in flight)", first, err)
		}

		got, err := st.jobs.Cancel(acme, &detourv1.CancelJobRequest{Id: job.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if s := got.GetState(); s != detourv1.JobState_JOB_STATE_RUNNING && s != detourv1.JobState_JOB_STATE_CANCELED {
			t.Errorf("Cancel returned %v, want RUNNING (stopping) or CANCELED", s)
		}
		var last *detourv1.Job
		for {
			j, err := w.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("watch after the cancel: %v", err)
			}
			last = j
		}
		if last.GetState() != detourv1.JobState_JOB_STATE_CANCELED || last.GetResult() != nil {
			t.Errorf("watch ended with %v, want CANCELED without a result", last)
		}
		testkit.Until(t, 10*time.Second, "the upstream call to be cancelled at the backend", func() bool { return f.Stats().InFlight == 0 })
		if s := f.Stats(); s.Total != 1 {
			t.Errorf("the backend saw %d calls, want 1: a cancelled job is not run again", s.Total)
		}
		again, err := st.jobs.Get(acme, &detourv1.GetJobRequest{Id: job.GetId()})
		if err != nil || again.GetState() != detourv1.JobState_JOB_STATE_CANCELED {
			t.Errorf("Get after the cancel: %v, %v; want CANCELED", again, err)
		}
		// Cancelling a final job returns it as it is.
		if j, err := st.jobs.Cancel(acme, &detourv1.CancelJobRequest{Id: job.GetId()}); err != nil || j.GetState() != detourv1.JobState_JOB_STATE_CANCELED {
			t.Errorf("second Cancel: %v, %v; want the job CANCELED", j, err)
		}
	})
}
