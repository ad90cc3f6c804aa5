package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// gate is a provider whose answers wait until the test opens it, so that
// calls stay in flight for as long as a test needs.
type gate struct {
	entered chan struct{} // one value per call that reached the provider
	open    chan struct{}
}

var _ router.Provider = (*gate)(nil)

func newGate() *gate { return &gate{entered: make(chan struct{}, 64), open: make(chan struct{})} }

func (g *gate) wait(ctx context.Context) error {
	g.entered <- struct{}{}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gate) Complete(ctx context.Context, _ *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	if err := g.wait(ctx); err != nil {
		return nil, err
	}
	return &detourv1.CompleteResponse{Content: "ok", FinishReason: "stop"}, nil
}

func (g *gate) Stream(ctx context.Context, _ *detourv1.CompleteRequest) (router.ChunkStream, error) {
	if err := g.wait(ctx); err != nil {
		return nil, err
	}
	return &oneChunk{}, nil
}

// oneChunk is a complete streamed answer of one chunk.
type oneChunk struct{ sent bool }

func (s *oneChunk) Recv() (*detourv1.CompleteChunk, error) {
	if s.sent {
		return nil, io.EOF
	}
	s.sent = true
	return &detourv1.CompleteChunk{Delta: "ok", FinishReason: "stop"}, nil
}

func (s *oneChunk) Close() error { return nil }

// admitFixture is a Server over a gate, on loopback, with metrics.
type admitFixture struct {
	gate    *gate
	rt      *router.Router
	metrics *metrics.Metrics
	conn    *grpc.ClientConn
	client  detourv1.RouterClient
}

func admitConfig(limits regions.LimitPolicy) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: "http://127.0.0.1:1/v1"}}}},
		Retry:   regions.RetryPolicy{MaxAttempts: 1},
		Limits:  limits,
	}
}

func startAdmit(t *testing.T, limits regions.LimitPolicy, opts Options) *admitFixture {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	fx := &admitFixture{gate: newGate(), metrics: metrics.New()}
	rt, err := router.New(&regions.Snapshot{Config: admitConfig(limits)}, router.Options{
		NewProvider: func(regions.Backend) (router.Provider, error) { return fx.gate, nil },
		Logger:      quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	fx.rt = rt
	opts.Logger, opts.Metrics = quiet, fx.metrics
	s := New(rt, opts)
	NewAdmin(rt, AdminOptions{Logger: quiet}).Register(s.GRPC())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(lis) }()
	fx.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	fx.client = detourv1.NewRouterClient(fx.conn)
	t.Cleanup(func() {
		fx.openGate()
		fx.conn.Close()
		s.Shutdown(context.Background())
		<-served
		rt.Close()
	})
	return fx
}

func (fx *admitFixture) openGate() {
	select {
	case <-fx.gate.open:
	default:
		close(fx.gate.open)
	}
}

var admitReq = &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: "x"}}}

// hold starts a call of method ("Complete" or "StreamComplete") that stays
// in flight until the gate opens or ctx ends, and waits until it reached the
// provider. Its result arrives on the returned channel.
func (fx *admitFixture) hold(t *testing.T, ctx context.Context, method string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fx.call(ctx, method) }()
	select {
	case <-fx.gate.entered:
	case err := <-done:
		t.Fatalf("held %s ended before it reached the provider: %v", method, err)
	case <-ctx.Done():
		t.Fatalf("held %s did not reach the provider: %v", method, ctx.Err())
	}
	return done
}

// call makes one call of method and returns its final status.
func (fx *admitFixture) call(ctx context.Context, method string, md ...string) error {
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	if method == "Complete" {
		_, err := fx.client.Complete(ctx, admitReq)
		return err
	}
	st, err := fx.client.StreamComplete(ctx, admitReq)
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// wantShed checks that err is the refusal of a call at the in-flight limit.
func wantShed(t *testing.T, err error, limit int) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("code = %v (%v), want ResourceExhausted", st.Code(), err)
	}
	if want := "detour is at its in-flight limit (" + strconv.Itoa(limit) + " calls); retry after "; !strings.HasPrefix(st.Message(), want) ||
		!strings.HasSuffix(st.Message(), " or on another replica") {
		t.Errorf("message = %q, want %q...\" or on another replica\"", st.Message(), want)
	}
	if len(st.Details()) != 1 {
		t.Fatalf("details = %v, want exactly one RetryInfo", st.Details())
	}
	ri, ok := st.Details()[0].(*errdetails.RetryInfo)
	if !ok {
		t.Fatalf("detail = %T, want *errdetails.RetryInfo", st.Details()[0])
	}
	if d := ri.GetRetryDelay().AsDuration(); d < shedDelay || d > shedDelay+shedJitter || d%time.Millisecond != 0 {
		t.Errorf("RetryInfo delay = %v, want whole milliseconds in [%v, %v]", d, shedDelay, shedDelay+shedJitter)
	}
	if !strings.Contains(st.Message(), "retry after "+ri.GetRetryDelay().AsDuration().String()+" ") {
		t.Errorf("message %q does not say the RetryInfo delay %v", st.Message(), ri.GetRetryDelay().AsDuration())
	}
}

// metric reads one sample of fx's /metrics, e.g.
// `detour_calls_shed_total{method="Complete"}`; absent is 0.
func (fx *admitFixture) metric(t *testing.T, series string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	fx.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return 0
}

// eventually waits until cond holds, failing the test after 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Until(t, 5*time.Second, what, cond)
}

func (fx *admitFixture) waitInflight(t *testing.T, n float64) {
	t.Helper()
	eventually(t, "detour_calls_inflight is "+strconv.FormatFloat(n, 'g', -1, 64), func() bool {
		return fx.metric(t, "detour_calls_inflight") == n
	})
}

func TestAdmissionShedsBeyondLimit(t *testing.T) {
	fx := startAdmit(t, regions.LimitPolicy{MaxInflight: 2}, Options{})
	ctx := ctxT(t)
	held := []<-chan error{fx.hold(t, ctx, "Complete"), fx.hold(t, ctx, "StreamComplete")}

	// A stream counts like a unary call: both methods are now refused.
	for _, m := range []string{"Complete", "StreamComplete"} {
		wantShed(t, fx.call(ctx, m), 2)
	}
	// Health, Admin and reflection are never shed.
	hc, err := healthpb.NewHealthClient(fx.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "detour.v1.Router"})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health at the limit = %v, %v; want SERVING", hc.GetStatus(), err)
	}
	if _, err := detourv1.NewAdminClient(fx.conn).Status(ctx, &detourv1.StatusRequest{}); err != nil {
		t.Errorf("Admin.Status at the limit: %v", err)
	}
	got := map[string]float64{}
	for _, s := range []string{
		`detour_calls_inflight`,
		`detour_calls_inflight_limit`,
		`detour_calls_shed_total{method="Complete"}`,
		`detour_calls_shed_total{method="StreamComplete"}`,
		`detour_calls_total{code="ResourceExhausted",method="Complete",source="none"}`,
	} {
		got[s] = fx.metric(t, s)
	}
	want := map[string]float64{
		`detour_calls_inflight`:                                                        2,
		`detour_calls_inflight_limit`:                                                  2,
		`detour_calls_shed_total{method="Complete"}`:                                   1,
		`detour_calls_shed_total{method="StreamComplete"}`:                             1,
		`detour_calls_total{code="ResourceExhausted",method="Complete",source="none"}`: 1,
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("metrics at the limit (-got +want):\n%s", diff)
	}
	if n := len(fx.gate.entered); n != 0 {
		t.Errorf("%d refused calls reached the provider", n)
	}

	fx.openGate()
	for i, done := range held {
		if err := <-done; err != nil {
			t.Errorf("held call %d: %v", i, err)
		}
	}
	fx.waitInflight(t, 0)
	for _, m := range []string{"Complete", "StreamComplete"} {
		if err := fx.call(ctx, m); err != nil {
			t.Errorf("%s after the held calls ended: %v", m, err)
		}
	}
}

// TestAdmissionLiveLimit changes limits.max_inflight under running calls:
// calls run with no limit are counted, so a limit set later applies to the
// next call at once.
func TestAdmissionLiveLimit(t *testing.T) {
	fx := startAdmit(t, regions.LimitPolicy{}, Options{})
	ctx := ctxT(t)
	apply := func(limit int) {
		t.Helper()
		if err := fx.rt.Apply(&regions.Snapshot{Config: admitConfig(regions.LimitPolicy{MaxInflight: limit})}); err != nil {
			t.Fatal(err)
		}
	}
	var held []<-chan error
	for range 3 {
		held = append(held, fx.hold(t, ctx, "Complete"))
	}
	apply(3)
	wantShed(t, fx.call(ctx, "Complete"), 3)
	apply(4)
	held = append(held, fx.hold(t, ctx, "StreamComplete"))
	apply(1) // below the calls running: they go on, new ones are refused
	wantShed(t, fx.call(ctx, "StreamComplete"), 1)

	fx.openGate()
	for i, done := range held {
		if err := <-done; err != nil {
			t.Errorf("held call %d: %v", i, err)
		}
	}
	fx.waitInflight(t, 0)
	if err := fx.call(ctx, "Complete"); err != nil {
		t.Errorf("Complete under limit 1 with nothing in flight: %v", err)
	}
}

// TestAdmissionReleasesEveryWayOut: a call frees its slot however it ends,
// including before any handler ran (a request the transport refuses to
// read).
func TestAdmissionReleasesEveryWayOut(t *testing.T) {
	tests := []struct {
		name     string
		end      func(t *testing.T, ctx context.Context, fx *admitFixture) error
		wantCode codes.Code
	}{
		{name: "request too large for the transport", wantCode: codes.ResourceExhausted, end: func(t *testing.T, ctx context.Context, fx *admitFixture) error {
			_, err := fx.client.Complete(ctx, &detourv1.CompleteRequest{Model: "m",
				Messages: []*detourv1.Message{{Role: "user", Content: strings.Repeat("x", 8<<10)}}})
			return err
		}},
		{name: "caller cancels", wantCode: codes.Canceled, end: func(t *testing.T, ctx context.Context, fx *admitFixture) error {
			ctx, cancel := context.WithCancel(ctx)
			done := fx.hold(t, ctx, "StreamComplete")
			cancel()
			return <-done
		}},
		{name: "deadline", wantCode: codes.DeadlineExceeded, end: func(t *testing.T, ctx context.Context, fx *admitFixture) error {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			return <-fx.hold(t, ctx, "Complete")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := startAdmit(t, regions.LimitPolicy{MaxInflight: 1}, Options{MaxRequestBytes: 4 << 10})
			ctx := ctxT(t)
			if got := status.Code(tt.end(t, ctx, fx)); got != tt.wantCode {
				t.Fatalf("code = %v, want %v", got, tt.wantCode)
			}
			fx.waitInflight(t, 0)
			done := fx.hold(t, ctx, "Complete") // the one slot is free again
			fx.openGate()
			if err := <-done; err != nil {
				t.Errorf("call after the slot was freed: %v", err)
			}
		})
	}
}

// TestAdmissionShedIsFree: refused calls never reach the router, so they
// spend no tenant quota (and touch no breaker: they never reach a backend).
func TestAdmissionShedIsFree(t *testing.T) {
	// Every tenant gets one call and practically no refill.
	fx := startAdmit(t, regions.LimitPolicy{MaxInflight: 1, TenantQPS: 0.001}, Options{})
	ctx := ctxT(t)
	held := fx.hold(t, metadata.AppendToOutgoingContext(ctx, auth.TenantKey, "a"), "Complete")
	for range 5 {
		wantShed(t, fx.call(ctx, "Complete", auth.TenantKey, "b"), 1)
	}
	fx.openGate()
	if err := <-held; err != nil {
		t.Fatalf("held call: %v", err)
	}
	fx.waitInflight(t, 0)
	if err := fx.call(ctx, "Complete", auth.TenantKey, "b"); err != nil {
		t.Errorf("tenant b's first admitted call: %v (refused calls spent its quota?)", err)
	}
	if err := fx.call(ctx, "Complete", auth.TenantKey, "b"); status.Code(err) != codes.ResourceExhausted || strings.Contains(status.Convert(err).Message(), "in-flight") {
		t.Errorf("tenant b's second admitted call = %v, want its quota to refuse it", err)
	}
}
