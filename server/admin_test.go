package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
	"github.com/detour-dev/detour/router"
)

// idle is a provider that is never called in these tests.
type idle struct{}

func (idle) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return nil, errors.New("not called")
}

func (idle) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	return nil, errors.New("not called")
}

var _ router.Provider = idle{}

// fakeSource is a ConfigSource with function fields.
type fakeSource struct {
	mu         sync.Mutex
	rejection  *etcd.Rejection
	setDrained func(backend string, drained bool) error
	notes      []string
}

func (f *fakeSource) LastRejection() *etcd.Rejection { return f.rejection }

func (f *fakeSource) SetDrained(_ context.Context, backend string, drained bool, note string) error {
	f.mu.Lock()
	f.notes = append(f.notes, note)
	f.mu.Unlock()
	return f.setDrained(backend, drained)
}

var _ ConfigSource = (*fakeSource)(nil)

var appliedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// startAdmin serves an Admin on loopback over a router with two regions and
// a fallback, on its own server (as with --admin-listen).
func startAdmin(t *testing.T, src ConfigSource) (detourv1.AdminClient, *router.Router) {
	t.Helper()
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "eu", Backends: []regions.Backend{{Name: "eu-a", Endpoint: "http://127.0.0.1:1/v1", Zone: "eu-1a"}}},
			{Name: "us", Priority: 1, Backends: []regions.Backend{{Name: "us-a", Kind: regions.KindDetour, Endpoint: "127.0.0.1:1"}}},
		},
		Fallbacks: []regions.Backend{{Name: "fb", Endpoint: "http://127.0.0.1:1/v1"}},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg, Revision: 12, Source: "etcd:/detour/config", AppliedAt: appliedAt}, router.Options{
		Region:      "eu",
		NewProvider: func(regions.Backend) (router.Provider, error) { return idle{}, nil },
		Logger:      log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	opts := AdminOptions{Region: "eu", Zone: "eu-1a", Logger: log}
	if src != nil {
		opts.Config = src
	}
	gs := NewAdminServer(NewAdmin(rt, opts))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		<-served
	})
	hc, err := healthpb.NewHealthClient(conn).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "detour.v1.Admin"})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("admin health = %v, %v; want SERVING", hc.GetStatus(), err)
	}
	return detourv1.NewAdminClient(conn), rt
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAdminStatus(t *testing.T) {
	// A backend that has served nothing: the initial limit, in slow start.
	fresh := &detourv1.Capacity{Limit: 256, State: "slow-start"}
	src := &fakeSource{rejection: &etcd.Rejection{Revision: 13, At: appliedAt.Add(time.Minute), Reasons: []string{"r1", "r2"}}}
	c, _ := startAdmin(t, src)
	got, err := c.Status(ctxT(t), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &detourv1.StatusResponse{
		ConfigRevision: 12,
		ConfigSource:   "etcd:/detour/config",
		AppliedAt:      timestamp(appliedAt),
		LastRejection:  &detourv1.Rejection{Revision: 13, At: timestamp(appliedAt.Add(time.Minute)), Reasons: []string{"r1", "r2"}},
		Region:         "eu",
		Zone:           "eu-1a",
		Backends: []*detourv1.BackendStatus{
			{Name: "eu-a", Region: "eu", Zone: "eu-1a", Kind: detourv1.ProviderKind_PROVIDER_KIND_OPENAI, BreakerState: "closed", Capacity: fresh},
			{Name: "us-a", Region: "us", Kind: detourv1.ProviderKind_PROVIDER_KIND_DETOUR, BreakerState: "closed", Capacity: fresh},
			{Name: "fb", Region: "fallback", Kind: detourv1.ProviderKind_PROVIDER_KIND_OPENAI, BreakerState: "closed", Fallback: true, Capacity: fresh},
		},
		// No calls yet: the floor of 10 retries a second over 10 s.
		RetryBudget: &detourv1.RetryBudget{Allowed: 100},
	}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Status (-got +want):\n%s", diff)
	}
}

func TestAdminDrainLocal(t *testing.T) {
	c, rt := startAdmin(t, nil)
	drained := func() map[string]bool {
		m := map[string]bool{}
		for _, b := range rt.Backends() {
			m[b.Name] = b.Drained
		}
		return m
	}
	tests := []struct {
		name    string
		call    func() error
		want    codes.Code
		drained map[string]bool
	}{
		{name: "empty name", call: func() error { _, err := c.Drain(ctxT(t), &detourv1.DrainRequest{}); return err },
			want: codes.InvalidArgument, drained: map[string]bool{"eu-a": false, "us-a": false, "fb": false}},
		{name: "unknown", call: func() error { _, err := c.Drain(ctxT(t), &detourv1.DrainRequest{Backend: "nope"}); return err },
			want: codes.NotFound, drained: map[string]bool{"eu-a": false, "us-a": false, "fb": false}},
		{name: "undrain unknown", call: func() error { _, err := c.Undrain(ctxT(t), &detourv1.UndrainRequest{Backend: "nope"}); return err },
			want: codes.NotFound, drained: map[string]bool{"eu-a": false, "us-a": false, "fb": false}},
		{name: "drain", call: func() error { _, err := c.Drain(ctxT(t), &detourv1.DrainRequest{Backend: "eu-a"}); return err },
			want: codes.OK, drained: map[string]bool{"eu-a": true, "us-a": false, "fb": false}},
		{name: "drain the last primary", call: func() error { _, err := c.Drain(ctxT(t), &detourv1.DrainRequest{Backend: "us-a"}); return err },
			want: codes.FailedPrecondition, drained: map[string]bool{"eu-a": true, "us-a": false, "fb": false}},
		{name: "drain a fallback", call: func() error { _, err := c.Drain(ctxT(t), &detourv1.DrainRequest{Backend: "fb"}); return err },
			want: codes.OK, drained: map[string]bool{"eu-a": true, "us-a": false, "fb": true}},
		{name: "undrain", call: func() error { _, err := c.Undrain(ctxT(t), &detourv1.UndrainRequest{Backend: "eu-a"}); return err },
			want: codes.OK, drained: map[string]bool{"eu-a": false, "us-a": false, "fb": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call()); got != tt.want {
				t.Errorf("code = %v, want %v", got, tt.want)
			}
			if diff := cmp.Diff(drained(), tt.drained); diff != "" {
				t.Errorf("drained (-got +want):\n%s", diff)
			}
		})
	}
}

func TestAdminDrainThroughConfigSource(t *testing.T) {
	var result error
	src := &fakeSource{setDrained: func(string, bool) error { return result }}
	c, rt := startAdmin(t, src)
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{name: "applied", err: nil, want: codes.OK},
		{name: "rejected", err: &etcd.RejectedError{Rejection: &etcd.Rejection{Reasons: []string{"x"}}}, want: codes.FailedPrecondition},
		{name: "drained by the document", err: etcd.ErrDrainedByDocument, want: codes.FailedPrecondition},
		{name: "not connected", err: etcd.ErrNotConnected, want: codes.Unavailable},
		{name: "etcd down", err: errors.New("etcd put /detour/drain/eu-a: context deadline exceeded (10.0.0.1:2379)"), want: codes.Unavailable},
		{name: "slow apply", err: context.DeadlineExceeded, want: codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			result = tt.err
			_, err := c.Drain(ctxT(t), &detourv1.DrainRequest{Backend: "eu-a"})
			if got := status.Code(err); got != tt.want {
				t.Errorf("code = %v (%v), want %v", got, err, tt.want)
			}
			if tt.name == "etcd down" && status.Convert(err).Message() != "drain eu-a: the config store is unavailable; see detour's log" {
				t.Errorf("message %q: want etcd's detail kept in the log", status.Convert(err).Message())
			}
		})
	}
	// The Admin asked the source, not the router: nothing drained locally.
	for _, b := range rt.Backends() {
		if b.Drained {
			t.Errorf("%s drained locally; with a ConfigSource only the source drains", b.Name)
		}
	}
	if len(src.notes) == 0 || src.notes[0] == "" {
		t.Error("no note passed with the drain")
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// TestAdminResetBreaker: the RPC refuses unknown and empty names and says
// when there was nothing to reset (router's TestResetBreaker covers an open
// one).
func TestAdminResetBreaker(t *testing.T) {
	c, _ := startAdmin(t, nil)
	if _, err := c.ResetBreaker(ctxT(t), &detourv1.ResetBreakerRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty name: %v, want InvalidArgument", err)
	}
	if _, err := c.ResetBreaker(ctxT(t), &detourv1.ResetBreakerRequest{Backend: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown backend: %v, want NotFound", err)
	}
	resp, err := c.ResetBreaker(ctxT(t), &detourv1.ResetBreakerRequest{Backend: "eu-a"})
	if err != nil || resp.GetWasOpen() {
		t.Fatalf("reset of a closed breaker = %v, %v; want was_open false", resp, err)
	}
}
