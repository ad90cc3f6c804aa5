package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/detour-dev/detour/internal/devetcd"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

// startEtcd runs a real etcd member in the test process on loopback.
func startEtcd(t *testing.T) *devetcd.Server {
	t.Helper()
	return devetcd.StartTest(t)
}

// etcdStore is a Store on srv under the default prefix.
func etcdStore(t *testing.T, srv *devetcd.Server) *etcd.Store {
	t.Helper()
	cli, err := etcd.Config{Endpoints: srv.Endpoints()}.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return etcd.NewStore(cli, etcd.Keys{})
}

// apply writes cfg (or a raw document) with a compare-and-swap on the
// current revision, as `detourctl config apply` does, and returns the new
// revision.
func apply(t *testing.T, s *etcd.Store, doc any) int64 {
	t.Helper()
	b, ok := doc.([]byte)
	if !ok {
		var err error
		if b, err = yaml.Marshal(doc); err != nil {
			t.Fatal(err)
		}
	}
	ctx := callCtx(t)
	cur, err := s.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.Put(ctx, b, cur.ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// instance is one detour Main running in process.
type instance struct {
	router detourv1.RouterClient
	admin  detourv1.AdminClient
	health healthpb.HealthClient
	stop   func()
}

// startLive runs Main with live and returns clients for its services; the
// Admin service is on its own listener when live.AdminListen is set.
func startLive(t *testing.T, live LiveOptions, region string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	adminc := make(chan net.Addr, 1)
	live.adminReady = func(a net.Addr) { adminc <- a }
	m := &Main{Listen: "127.0.0.1:0", Region: region, Grace: 5 * time.Second, Live: live,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ready:  func(a net.Addr) { addrc <- a }}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("detour did not start: %v", err)
	case <-time.After(15 * time.Second):
		cancel()
		<-done
		t.Fatal("detour not serving after 15s")
	}
	adminAddr := addr
	if live.AdminListen != "" {
		adminAddr = <-adminc
	}
	dial := func(a net.Addr) *grpc.ClientConn {
		conn, err := grpc.NewClient(a.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	conn, adminConn := dial(addr), dial(adminAddr)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			adminConn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("detour Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &instance{router: detourv1.NewRouterClient(conn), admin: detourv1.NewAdminClient(adminConn),
		health: healthpb.NewHealthClient(conn), stop: stop}
}

func (in *instance) status(t *testing.T) *detourv1.StatusResponse {
	t.Helper()
	st, err := in.admin.Status(callCtx(t), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitRevision waits until the instance serves the config at rev.
func (in *instance) waitRevision(t *testing.T, rev int64) {
	t.Helper()
	eventually(t, 10*time.Second, func() bool { return in.status(t).GetConfigRevision() >= rev }, fmt.Sprintf("revision %d is applied", rev))
}

func (in *instance) servedBy(t *testing.T, prompt string) string {
	t.Helper()
	resp, err := in.router.Complete(callCtx(t), userReq(prompt))
	if err != nil {
		t.Fatalf("%s: %v", prompt, err)
	}
	return resp.GetServedBy().GetBackend()
}

func (in *instance) configHealth(t *testing.T) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := in.health.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "detour.config"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStatus()
}

func region(name string, prio int, backends ...regions.Backend) regions.Region {
	return regions.Region{Name: name, Priority: prio, Backends: backends}
}

func TestEtcdApplyChangesRouting(t *testing.T) {
	a := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	b := startFake(t, fakellm.Config{Region: "b", Name: "b-1"}, false)
	e := startEtcd(t)
	s := etcdStore(t, e)
	rev := apply(t, s, &regions.Config{Regions: []regions.Region{region("a", 0, openaiBackend("a-1", a))}})
	in := startLive(t, LiveOptions{Etcd: etcd.Config{Endpoints: e.Endpoints()}}, "a")

	st := in.status(t)
	if st.GetConfigSource() != "etcd:/detour/config" || st.GetConfigRevision() != rev || st.GetLastRejection() != nil {
		t.Errorf("status: source %q revision %d rejection %v; want etcd:/detour/config at %d, none", st.GetConfigSource(), st.GetConfigRevision(), st.GetLastRejection(), rev)
	}
	if got := in.configHealth(t); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("detour.config health = %v, want SERVING", got)
	}
	if got := in.servedBy(t, "before"); got != "a-1" {
		t.Fatalf("before the edit: served by %s, want a-1", got)
	}
	// An admin moves the traffic to region b.
	rev = apply(t, s, &regions.Config{Regions: []regions.Region{region("b", 1, openaiBackend("b-1", b))}})
	in.waitRevision(t, rev)
	for i := range 5 {
		if got := in.servedBy(t, fmt.Sprint("after ", i)); got != "b-1" {
			t.Fatalf("after the edit: served by %s, want b-1", got)
		}
	}

	// An invalid document is rejected with every reason; the old routing
	// keeps serving.
	bad := []byte(fmt.Sprintf("regions:\n  - name: b\n    backends:\n      - name: b-1\n        endpoint: http://%s/v1\n        weight: -1\n      - name: b-1\n        endpoint: nowhere\n", b.HTTPAddr()))
	badRev := apply(t, s, bad)
	eventually(t, 10*time.Second, func() bool { return in.status(t).GetLastRejection().GetRevision() == badRev }, "the bad document is rejected")
	st = in.status(t)
	want := []string{
		"regions[0].backends[0] (b-1): weight -1 must be in 0..1000",
		"regions[0].backends[1] (b-1): duplicate backend name, first used at regions[0].backends[0] (b-1)",
		`regions[0].backends[1] (b-1): endpoint "nowhere" must be an http:// or https:// URL`,
	}
	if !slices.Equal(st.GetLastRejection().GetReasons(), want) {
		t.Errorf("rejection reasons %q, want %q", st.GetLastRejection().GetReasons(), want)
	}
	if st.GetConfigRevision() != rev {
		t.Errorf("serving revision %d after a rejection, want %d still", st.GetConfigRevision(), rev)
	}
	if got := in.servedBy(t, "after the bad edit"); got != "b-1" {
		t.Errorf("after the bad edit: served by %s, want b-1", got)
	}
}

// TestEtcdOutage stops etcd while calls flow: every call still succeeds,
// and once etcd is back a later edit is applied.
func TestEtcdOutage(t *testing.T) {
	a := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	b := startFake(t, fakellm.Config{Region: "a", Name: "a-2"}, false)
	e := startEtcd(t)
	s := etcdStore(t, e)
	apply(t, s, &regions.Config{Regions: []regions.Region{region("a", 0, openaiBackend("a-1", a))}})
	in := startLive(t, LiveOptions{Etcd: etcd.Config{Endpoints: e.Endpoints()}, LastKnownGood: filepath.Join(t.TempDir(), "lkg.yaml")}, "a")

	var calls, failed atomic.Int64
	var lastErr atomic.Value
	ctx, stopLoad := context.WithCancel(context.Background())
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for i := 0; ctx.Err() == nil; i++ {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := in.router.Complete(cctx, userReq(fmt.Sprint("load ", i)))
			cancel()
			if ctx.Err() != nil {
				return
			}
			calls.Add(1)
			if err != nil {
				failed.Add(1)
				lastErr.Store(err)
			}
		}
	}()
	defer func() { stopLoad(); <-loadDone }()
	waitCalls := func(n int64, what string) {
		t.Helper()
		target := calls.Load() + n
		eventually(t, 10*time.Second, func() bool { return calls.Load() >= target }, what)
	}
	waitCalls(20, "calls flow")
	e.Stop()
	waitCalls(50, "calls flow while etcd is down")
	if st := in.status(t); st.GetConfigSource() != "etcd:/detour/config" {
		t.Errorf("while etcd is down: source %q, want the etcd config kept", st.GetConfigSource())
	}
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	rev := apply(t, s, &regions.Config{Regions: []regions.Region{region("a", 0, openaiBackend("a-2", b))}})
	in.waitRevision(t, rev)
	waitCalls(20, "calls flow after the edit")
	if got := in.servedBy(t, "after the outage"); got != "a-2" {
		t.Errorf("after the outage and the edit: served by %s, want a-2", got)
	}
	stopLoad()
	<-loadDone
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed across the etcd outage, want 0; last: %v", n, calls.Load(), lastErr.Load())
	}
}

// TestEtcdDownServesLastKnownGood restarts detour while etcd is down: it
// serves the last document it applied, says so, and returns to etcd's
// config when etcd is back. Its Admin service is on its own listener.
func TestEtcdDownServesLastKnownGood(t *testing.T) {
	a := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	b := startFake(t, fakellm.Config{Region: "a", Name: "a-2"}, false)
	e := startEtcd(t)
	s := etcdStore(t, e)
	rev := apply(t, s, &regions.Config{Regions: []regions.Region{region("a", 0, openaiBackend("a-1", a), openaiBackend("a-2", b))}})
	if _, err := s.SetDrained(callCtx(t), "a-2", true, "test"); err != nil {
		t.Fatal(err)
	}
	live := LiveOptions{
		Etcd:          etcd.Config{Endpoints: e.Endpoints()},
		LastKnownGood: filepath.Join(t.TempDir(), "lkg.yaml"),
		ReadTimeout:   300 * time.Millisecond,
		AdminListen:   "127.0.0.1:0",
	}
	first := startLive(t, live, "a")
	drainRev := first.status(t).GetConfigRevision()
	if drainRev <= rev {
		t.Fatalf("first instance serves revision %d, want the drain after %d", drainRev, rev)
	}
	first.stop()
	e.Stop()

	in := startLive(t, live, "a")
	st := in.status(t)
	if st.GetConfigSource() != "last-known-good:"+live.LastKnownGood || st.GetConfigRevision() != drainRev {
		t.Errorf("with etcd down: source %q revision %d, want last-known-good:%s at %d", st.GetConfigSource(), st.GetConfigRevision(), live.LastKnownGood, drainRev)
	}
	if got := in.configHealth(t); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("detour.config health from the last-known-good file = %v, want NOT_SERVING", got)
	}
	// The file kept the drain: only a-1 serves.
	for i := range 5 {
		if got := in.servedBy(t, fmt.Sprint("lkg ", i)); got != "a-1" {
			t.Fatalf("from the last-known-good file: served by %s, want a-1 (a-2 drained)", got)
		}
	}
	// Draining needs etcd while it is down.
	dctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := in.admin.Drain(dctx, &detourv1.DrainRequest{Backend: "a-1"}); status.Code(err) == codes.OK {
		t.Error("Drain succeeded with etcd down")
	}

	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return in.status(t).GetConfigSource() == "etcd:/detour/config" }, "etcd's config replaces the file's")
	if got := in.configHealth(t); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("detour.config health back on etcd = %v, want SERVING", got)
	}
}

// TestEtcdDrainLetsInflightCallsFinish drains a backend through the Admin
// service while calls run on it: they finish, and no new call reaches it.
func TestEtcdDrainLetsInflightCallsFinish(t *testing.T) {
	slow := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{Latency: 500 * time.Millisecond}}, false)
	other := startFake(t, fakellm.Config{Region: "b", Name: "b-1"}, false)
	e := startEtcd(t)
	s := etcdStore(t, e)
	apply(t, s, &regions.Config{Regions: []regions.Region{region("a", 0, openaiBackend("a-1", slow)), region("b", 1, openaiBackend("b-1", other))}})
	in := startLive(t, LiveOptions{Etcd: etcd.Config{Endpoints: e.Endpoints()}}, "a")

	const n = 3
	type result struct {
		backend string
		err     error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			resp, err := in.router.Complete(callCtx(t), userReq(fmt.Sprint("in flight ", i)))
			results <- result{resp.GetServedBy().GetBackend(), err}
		}()
	}
	eventually(t, 10*time.Second, func() bool { return slow.Stats().InFlight == n }, "the calls reach a-1")

	if _, err := in.admin.Drain(callCtx(t), &detourv1.DrainRequest{Backend: "a-1"}); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	// Drain returned: this instance applied it, and the key is in etcd for
	// every other replica.
	d, err := s.Get(callCtx(t))
	if err != nil || !slices.Equal(d.Drained, []string{"a-1"}) {
		t.Errorf("drain keys %v (%v), want [a-1]", d.Drained, err)
	}
	for i := range 5 {
		if got := in.servedBy(t, fmt.Sprint("new ", i)); got != "b-1" {
			t.Errorf("new call %d served by %s while a-1 is drained", i, got)
		}
	}
	for range n {
		r := <-results
		if r.err != nil || r.backend != "a-1" {
			t.Errorf("in-flight call: served by %q, %v; want it to finish on a-1", r.backend, r.err)
		}
	}
	if got := slow.Stats().Total; got != n {
		t.Errorf("a-1 received %d calls, want only the %d in flight before the drain", got, n)
	}
	var drained bool
	for _, b := range in.status(t).GetBackends() {
		if b.GetName() == "a-1" {
			drained = b.GetDrained()
		}
	}
	if !drained {
		t.Error("Status does not show a-1 drained")
	}
	// Errors from the table.
	for _, tt := range []struct {
		name string
		want codes.Code
	}{{"", codes.InvalidArgument}, {"nope", codes.NotFound}, {"b-1", codes.FailedPrecondition}} {
		if _, err := in.admin.Drain(callCtx(t), &detourv1.DrainRequest{Backend: tt.name}); status.Code(err) != tt.want {
			t.Errorf("Drain(%q) = %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := in.admin.Undrain(callCtx(t), &detourv1.UndrainRequest{Backend: "a-1"}); err != nil {
		t.Fatalf("Undrain: %v", err)
	}
	if got := in.servedBy(t, "undrained"); got != "a-1" {
		t.Errorf("after Undrain: served by %s, want a-1", got)
	}
}

func TestEtcdServeFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "both sources", args: []string{"serve", "--config", "x.yaml", "--etcd-endpoints", "127.0.0.1:2379"}},
		{name: "lkg without etcd", args: []string{"serve", "--config", "x.yaml", "--lkg", "/tmp/lkg.yaml"}},
		{name: "cert without key", args: []string{"serve", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-cert", "c.pem"}},
		{name: "user without password", args: []string{"serve", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-user", "detour"}},
		{name: "bad prefix", args: []string{"serve", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-prefix", "detour"}},
	}
	t.Setenv("DETOUR_ETCD_PASSWORD", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut errWriter
			err := run(context.Background(), tt.args, io.Discard, &errOut)
			if !errors.Is(err, errUsage) || errOut.n == 0 {
				t.Errorf("run(%q) = %v, want a usage error explained on stderr", tt.args, err)
			}
		})
	}
}

type errWriter struct{ n int }

func (w *errWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
