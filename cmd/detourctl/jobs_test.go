package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/jobs"
	"github.com/detour-dev/detour/jobs/jobstest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// TestJobsCommands: detourctl jobs list, get and cancel against a detour
// with --auth token: a tenant sees its own jobs, an admin every tenant's
// (and names one with --tenant), another tenant's job is not found.
func TestJobsCommands(t *testing.T) {
	const (
		adminToken  = "tok-oncall-51c7e2a9d04b83f6"
		acmeToken   = "tok-acme-a83d0c6e72f915b4"
		globexToken = "tok-globex-0c6e72f915b4a83d"
	)
	f := fakellm.New(fakellm.Config{Region: "r", Name: "a", Settings: fakellm.Settings{HangRate: 1}})
	if err := f.Start("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cfg := &regions.Config{
		Regions: []regions.Region{{Name: "r", Backends: []regions.Backend{{Name: "a", Endpoint: "http://" + f.HTTPAddr() + "/v1"}}}},
		Tenants: []regions.Tenant{
			{Principal: regions.Principal{Name: "acme", TokenSHA256: []string{auth.TokenSHA256(acmeToken)}}},
			{Principal: regions.Principal{Name: "globex", TokenSHA256: []string{auth.TokenSHA256(globexToken)}}},
		},
		Admins: []regions.Principal{{Name: "oncall", TokenSHA256: []string{auth.TokenSHA256(adminToken)}}},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Region: "r", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eng, err := jobs.Open(ctx, jobs.Config{URL: jobstest.SQLite(t), Router: rt, Status: server.JobStatus(log), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Options{Mode: auth.ModeToken, Config: func() *regions.Config { return cfg }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(rt, server.Options{Logger: log, GRPCOptions: []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(authn.UnaryInterceptor()), grpc.ChainStreamInterceptor(authn.StreamInterceptor())}})
	srv.ServeJobs(eng)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Shutdown(context.Background()); eng.Close() })
	addr := lis.Addr().String()

	job, _, err := eng.Submit(ctx, jobs.Submission{Tenant: "acme", Request: &detourv1.CompleteRequest{Model: "m",
		Messages: []*detourv1.Message{{Role: "user", Content: "long report"}}}, Key: "report-7"})
	if err != nil {
		t.Fatal(err)
	}
	testkit.Until(t, 10*time.Second, "the job to reach the backend", func() bool { return f.Stats().InFlight == 1 })
	admin := []string{"--addr", addr, "--token-file", writeFile(t, "admin.token", adminToken)}
	acme := []string{"--addr", addr, "--token-file", writeFile(t, "acme.token", acmeToken)}
	globex := []string{"--addr", addr, "--token-file", writeFile(t, "globex.token", globexToken)}

	out, errOut, err := ctl(t, append([]string{"jobs", "list"}, acme...)...)
	if err != nil || !strings.Contains(out, job.GetId()) || !strings.Contains(out, "running") || !strings.Contains(out, "report-7") {
		t.Errorf("acme's jobs list: %v\n%s%s", err, out, errOut)
	}
	out, _, err = ctl(t, append([]string{"jobs", "list", "--state", "queued,running"}, admin...)...)
	if err != nil || !strings.Contains(out, "acme") {
		t.Errorf("admin's jobs list of every tenant: %v\n%s", err, out)
	}
	out, _, err = ctl(t, append([]string{"jobs", "list"}, globex...)...)
	if err != nil || strings.Contains(out, "acme") {
		t.Errorf("globex's jobs list shows acme's job: %v\n%s", err, out)
	}
	_, errOut, err = ctl(t, append([]string{"jobs", "get", job.GetId()}, globex...)...)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "not found") {
		t.Errorf("globex gets acme's job: exit %d, %v %s; want not found", exitCode(err), err, errOut)
	}
	out, _, err = ctl(t, append([]string{"jobs", "get", job.GetId(), "--tenant", "acme"}, admin...)...)
	if err != nil || !strings.Contains(out, "state      running") || !strings.Contains(out, "model m, 1 message") {
		t.Errorf("admin's jobs get: %v\n%s", err, out)
	}
	out, _, err = ctl(t, append([]string{"jobs", "cancel", job.GetId()}, acme...)...)
	if err != nil || !strings.Contains(out, "job "+job.GetId()) {
		t.Errorf("acme's jobs cancel: %v\n%s", err, out)
	}
	testkit.Until(t, 10*time.Second, "the job's upstream call to be cancelled", func() bool { return f.Stats().InFlight == 0 })
	testkit.Until(t, 10*time.Second, "jobs get -o json to show the job canceled", func() bool {
		out, _, err = ctl(t, append([]string{"jobs", "get", job.GetId(), "-o", "json"}, acme...)...)
		return err == nil && strings.Contains(out, `"state": "JOB_STATE_CANCELED"`)
	})
	if _, _, err := ctl(t, append([]string{"jobs", "list", "--state", "lost"}, acme...)...); exitCode(err) != 2 {
		t.Errorf("jobs list --state lost: exit %d, want 2", exitCode(err))
	}
}
