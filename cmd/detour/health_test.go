package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testpki"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/server"
)

// TestHealthListener runs detour with mutual TLS on its Router listener and
// a plaintext --health-listen: the probes' port answers health without TLS
// while the Router port refuses plaintext, reports NOT_SERVING while a
// shutdown drains a call in flight, and is closed once detour stopped.
func TestHealthListener(t *testing.T) {
	pki := testpki.New(t)
	pki.Issue(t, "server", "detour", "", true)
	search := pki.Issue(t, "search", "search", "spiffe://corp/ns/search/sa/api", false)
	// Every call hangs until its caller gives up: one holds the drain open.
	hang := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{HangRate: 1}}, false)
	cfg := &regions.Config{
		Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", hang)}}},
		Tenants: []regions.Tenant{{Principal: regions.Principal{Name: "search", Identities: []string{"spiffe://corp/ns/search/sa/api"}}}},
	}
	addrc, healthc := make(chan net.Addr, 1), make(chan net.Addr, 1)
	m := &Main{Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", Region: "a", Grace: 30 * time.Second, config: cfg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Security: SecurityOptions{
			TLSCert: pki.Path("server.crt"), TLSKey: pki.Path("server.key"),
			TLSClientCA: pki.Path("ca.crt"), TLSReload: time.Hour, Auth: auth.ModeTLS,
		},
		ready:       func(a net.Addr) { addrc <- a },
		healthReady: func(a net.Addr) { healthc <- a },
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var addr, healthAddr net.Addr
	select {
	case addr = <-addrc:
		healthAddr = <-healthc // sent before ready
	case err := <-done:
		t.Fatalf("detour did not start: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	plain := func(addr net.Addr) healthpb.HealthClient {
		cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	check := func(hc healthpb.HealthClient, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		return resp.GetStatus(), err
	}
	probe := plain(healthAddr)
	services := []string{"", detourv1.Router_ServiceDesc.ServiceName, server.ConfigHealthService}
	for _, svc := range services {
		if got, err := check(probe, svc); err != nil || got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health port, service %q: %v, %v; want SERVING", svc, got, err)
		}
	}
	// The Router port is mutual TLS only.
	if _, err := check(plain(addr), ""); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext health check on the mTLS Router port: %v, want Unavailable", err)
	}
	// Only health on the probe port, and reflection, which lists only
	// health and itself (grpcurl needs it): no Router.
	probeConn, err := grpc.NewClient(healthAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer probeConn.Close()
	if _, err := detourv1.NewRouterClient(probeConn).Complete(callCtx(t), userReq("hi")); status.Code(err) != codes.Unimplemented {
		t.Errorf("Router call on the health port: %v, want Unimplemented", err)
	}
	if diff := cmp.Diff(listServices(t, probeConn), []string{
		"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
	}); diff != "" {
		t.Errorf("services reflection lists on the health port (-got +want):\n%s", diff)
	}

	// A call in flight over mTLS holds the drain open.
	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{search}, MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	holdCtx, endCall := context.WithCancel(context.Background())
	defer endCall()
	callDone := make(chan error, 1)
	go func() {
		_, err := detourv1.NewRouterClient(cc).Complete(holdCtx, userReq("hold the drain"))
		callDone <- err
	}()
	eventually(t, 10*time.Second, func() bool { return hang.Stats().InFlight == 1 }, "the call reaches the backend")

	cancel() // shutdown begins; the call keeps the drain going
	eventually(t, 10*time.Second, func() bool {
		st, err := check(probe, "")
		return err == nil && st == healthpb.HealthCheckResponse_NOT_SERVING
	}, "the health port reports NOT_SERVING during the drain")
	for _, svc := range services {
		if got, err := check(probe, svc); err != nil || got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("draining, service %q: %v, %v; want NOT_SERVING", svc, got, err)
		}
	}

	endCall()
	<-callDone
	if err := <-done; err != nil {
		t.Errorf("detour Run: %v", err)
	}
	stopped = true
	if _, err := check(plain(healthAddr), ""); status.Code(err) != codes.Unavailable {
		t.Errorf("health port after shutdown: %v, want Unavailable (closed)", err)
	}
}

func TestHealthListenFlag(t *testing.T) {
	m, err := parseServe([]string{"--config", "x.yaml", "--health-listen", "127.0.0.1:50053"}, io.Discard)
	if err != nil || m.HealthListen != "127.0.0.1:50053" {
		t.Errorf("--health-listen 127.0.0.1:50053: %+v, %v", m, err)
	}
	if _, err := parseServe([]string{"--config", "x.yaml", "--health-listen", "50053"}, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("--health-listen 50053: %v, want a usage error", err)
	}
}

// listServices asks cc's server reflection for its services, sorted.
func listServices(t *testing.T, cc *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	slices.Sort(names)
	return names
}
