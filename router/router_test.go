package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeProvider answers from function fields.
type fakeProvider struct {
	name     string
	complete func(ctx context.Context) (*detourv1.CompleteResponse, error)
	stream   func(ctx context.Context) (ChunkStream, error)
	calls    atomic.Int64
	closed   atomic.Bool
}

var _ Provider = (*fakeProvider)(nil)

func (f *fakeProvider) Complete(ctx context.Context, _ *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	f.calls.Add(1)
	if f.complete == nil {
		return &detourv1.CompleteResponse{Content: "from " + f.name, FinishReason: "stop"}, nil
	}
	return f.complete(ctx)
}

func (f *fakeProvider) Stream(ctx context.Context, _ *detourv1.CompleteRequest) (ChunkStream, error) {
	f.calls.Add(1)
	if f.stream == nil {
		return &sliceStream{chunks: []string{"a", "b", "c"}}, nil
	}
	return f.stream(ctx)
}

func (f *fakeProvider) Close() error { f.closed.Store(true); return nil }

type sliceStream struct {
	chunks []string
	err    error // returned after the chunks instead of io.EOF
	i      int
}

func (s *sliceStream) Recv() (*detourv1.CompleteChunk, error) {
	if s.i < len(s.chunks) {
		s.i++
		c := &detourv1.CompleteChunk{Delta: s.chunks[s.i-1]}
		if s.i == len(s.chunks) && s.err == nil {
			c.FinishReason = "stop" // a complete answer, which the cache keeps
		}
		return c, nil
	}
	if s.err != nil {
		return nil, s.err
	}
	return nil, io.EOF
}

func (s *sliceStream) Close() error { return nil }

// httpErr is an upstream HTTP failure as the provider package reports it.
type httpErr struct {
	code int
	ra   time.Duration
}

func (e httpErr) Error() string             { return fmt.Sprintf("HTTP %d", e.code) }
func (e httpErr) StatusCode() int           { return e.code }
func (e httpErr) RetryAfter() time.Duration { return e.ra }

var busy = func(context.Context) (*detourv1.CompleteResponse, error) { return nil, httpErr{code: 503} }

// fixture builds a router over fake providers keyed by backend name.
type fixture struct {
	mu    sync.Mutex
	fakes map[string]*fakeProvider
}

func (fx *fixture) provider(name string) *fakeProvider {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if fx.fakes == nil {
		fx.fakes = map[string]*fakeProvider{}
	}
	if fx.fakes[name] == nil {
		fx.fakes[name] = &fakeProvider{name: name}
	}
	return fx.fakes[name]
}

func (fx *fixture) newProvider(b regions.Backend) (Provider, error) { return fx.provider(b.Name), nil }

func testConfig() *regions.Config {
	ep := "http://127.0.0.1:1/v1"
	return &regions.Config{
		Regions: []regions.Region{
			{Name: "home", Backends: []regions.Backend{{Name: "home-1", Endpoint: ep}}},
			{Name: "near", Priority: 1, Backends: []regions.Backend{{Name: "near-1", Endpoint: ep}}},
			{Name: "far", Priority: 2, Backends: []regions.Backend{{Name: "far-1", Endpoint: ep}}},
		},
		Fallbacks: []regions.Backend{{Name: "fb-1", Endpoint: ep}},
		Retry:     regions.RetryPolicy{MaxAttempts: 2, BackoffBase: regions.Duration(time.Millisecond), BackoffMax: regions.Duration(time.Millisecond)},
	}
}

func newTestRouter(t *testing.T, fx *fixture, cfg *regions.Config) *Router {
	t.Helper()
	r, err := New(&regions.Snapshot{Config: cfg}, Options{Region: "home", NewProvider: fx.newProvider, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func req() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: "hi"}}}
}

func TestComplete(t *testing.T) {
	type want struct {
		Backend  string
		Source   detourv1.Source
		Attempts int32
		Code     Code
	}
	tests := []struct {
		name  string
		setup func(fx *fixture)
		want  want
	}{
		{
			name: "own region first",
			want: want{Backend: "home-1", Source: detourv1.Source_SOURCE_LIVE, Attempts: 1},
		},
		{
			name:  "busy answer retried in the next region",
			setup: func(fx *fixture) { fx.provider("home-1").complete = busy },
			want:  want{Backend: "near-1", Source: detourv1.Source_SOURCE_LIVE, Attempts: 2},
		},
		{
			name: "primaries busy within max attempts: fallback",
			setup: func(fx *fixture) {
				fx.provider("home-1").complete = busy
				fx.provider("near-1").complete = busy
			},
			want: want{Backend: "fb-1", Source: detourv1.Source_SOURCE_FALLBACK, Attempts: 3},
		},
		{
			name: "everything busy: unavailable",
			setup: func(fx *fixture) {
				fx.provider("home-1").complete = busy
				fx.provider("near-1").complete = busy
				fx.provider("fb-1").complete = busy
			},
			want: want{Code: Unavailable},
		},
		{
			name: "client error is not retried",
			setup: func(fx *fixture) {
				fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) { return nil, httpErr{code: 400} }
			},
			want: want{Code: Rejected},
		},
		{
			name: "gRPC unavailable is busy",
			setup: func(fx *fixture) {
				fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
					return nil, status.Error(codes.Unavailable, "server busy")
				}
			},
			want: want{Backend: "near-1", Source: detourv1.Source_SOURCE_LIVE, Attempts: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := &fixture{}
			if tt.setup != nil {
				tt.setup(fx)
			}
			r := newTestRouter(t, fx, testConfig())
			resp, err := r.Complete(context.Background(), req())
			var got want
			if err != nil {
				var re *Error
				if !errors.As(err, &re) {
					t.Fatalf("Complete error %v is not a *router.Error", err)
				}
				got.Code = re.Code
			} else {
				got = want{Backend: resp.GetServedBy().GetBackend(), Source: resp.GetSource(), Attempts: resp.GetAttempts()}
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Complete (-got +want):\n%s", diff)
			}
		})
	}
}

func TestCompleteClientErrorCallsOneBackend(t *testing.T) {
	fx := &fixture{}
	fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) { return nil, httpErr{code: 422} }
	r := newTestRouter(t, fx, testConfig())
	if _, err := r.Complete(context.Background(), req()); err == nil {
		t.Fatal("Complete succeeded, want a rejection")
	}
	if n := fx.provider("near-1").calls.Load() + fx.provider("fb-1").calls.Load(); n != 0 {
		t.Errorf("other backends got %d calls after a client error, want 0", n)
	}
}

func TestRetryHint(t *testing.T) {
	fx := &fixture{}
	for _, n := range []string{"home-1", "near-1", "fb-1"} {
		fx.provider(n).complete = func(context.Context) (*detourv1.CompleteResponse, error) {
			return nil, httpErr{code: 429, ra: 7 * time.Second}
		}
	}
	r := newTestRouter(t, fx, testConfig())
	_, err := r.Complete(context.Background(), req())
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *router.Error", err)
	}
	if diff := cmp.Diff([]any{re.Code, re.RetryAfter, re.Attempts}, []any{Exhausted, 7 * time.Second, 3}); diff != "" {
		t.Errorf("(code, retry after, attempts) (-got +want):\n%s", diff)
	}
}

func TestCallerDeadlineIsNotRetried(t *testing.T) {
	fx := &fixture{}
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	r := newTestRouter(t, fx, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := r.Complete(ctx, req())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if n := fx.provider("near-1").calls.Load() + fx.provider("fb-1").calls.Load(); n != 0 {
		t.Errorf("%d calls after the caller's deadline, want 0", n)
	}
}

func TestAttemptTimeoutIsBusy(t *testing.T) {
	fx := &fixture{}
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	cfg := testConfig()
	cfg.Regions[0].Backends[0].Timeout = regions.Duration(10 * time.Millisecond)
	r := newTestRouter(t, fx, cfg)
	resp, err := r.Complete(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetServedBy().GetBackend(); got != "near-1" {
		t.Errorf("served by %q, want near-1 after home-1 timed out", got)
	}
}

func TestUnknownModelAndDrain(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	for i := range cfg.Regions {
		cfg.Regions[i].Backends[0].Models = []string{"m"}
	}
	cfg.Regions[0].Backends[0].Drained = true
	r := newTestRouter(t, fx, cfg)
	_, err := r.Complete(context.Background(), &detourv1.CompleteRequest{Model: "other"})
	var re *Error
	if !errors.As(err, &re) || re.Code != UnknownModel {
		t.Errorf("unknown model: err = %v, want code UnknownModel", err)
	}
	resp, err := r.Complete(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetServedBy().GetBackend(); got != "near-1" {
		t.Errorf("served by %q, want near-1 while home-1 is drained", got)
	}
}

func TestApplyKeepsUnchangedBackends(t *testing.T) {
	fx := &fixture{}
	r := newTestRouter(t, fx, testConfig())
	before := r.tab.Load().byName["near-1"].live
	cfg := testConfig()
	cfg.Regions = cfg.Regions[1:] // remove "home"
	if err := r.Apply(&regions.Snapshot{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	if r.tab.Load().byName["near-1"].live != before {
		t.Error("unchanged backend near-1 was rebuilt, want its state kept")
	}
	if !fx.provider("home-1").closed.Load() {
		t.Error("removed idle backend home-1 was not closed")
	}
	resp, err := r.Complete(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetServedBy().GetBackend(); got != "near-1" {
		t.Errorf("served by %q after removing home, want near-1", got)
	}
}

func TestRemovedBackendClosesAfterInflight(t *testing.T) {
	fx := &fixture{}
	started, finish := make(chan struct{}), make(chan struct{})
	fx.provider("home-1").complete = func(context.Context) (*detourv1.CompleteResponse, error) {
		close(started)
		<-finish
		return &detourv1.CompleteResponse{Content: "late"}, nil
	}
	r := newTestRouter(t, fx, testConfig())
	done := make(chan error, 1)
	go func() {
		_, err := r.Complete(context.Background(), req())
		done <- err
	}()
	<-started
	cfg := testConfig()
	cfg.Regions = cfg.Regions[1:]
	if err := r.Apply(&regions.Snapshot{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	if fx.provider("home-1").closed.Load() {
		t.Fatal("removed backend closed while a call was in flight")
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("in-flight call on a removed backend failed: %v", err)
	}
	if !fx.provider("home-1").closed.Load() {
		t.Error("removed backend not closed after its last call")
	}
}

func TestStream(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(fx *fixture)
		wantDeltas []string
		wantFrom   string
		wantErr    bool
	}{
		{name: "whole stream", wantDeltas: []string{"a", "b", "c"}, wantFrom: "home-1"},
		{
			name: "failure before the first chunk fails over",
			setup: func(fx *fixture) {
				fx.provider("home-1").stream = func(context.Context) (ChunkStream, error) { return nil, httpErr{code: 503} }
			},
			wantDeltas: []string{"a", "b", "c"}, wantFrom: "near-1",
		},
		{
			name: "empty stream fails over",
			setup: func(fx *fixture) {
				fx.provider("home-1").stream = func(context.Context) (ChunkStream, error) { return &sliceStream{}, nil }
			},
			wantDeltas: []string{"a", "b", "c"}, wantFrom: "near-1",
		},
		{
			name: "failure after the first chunk ends the call",
			setup: func(fx *fixture) {
				fx.provider("home-1").stream = func(context.Context) (ChunkStream, error) {
					return &sliceStream{chunks: []string{"a"}, err: errors.New("connection reset")}, nil
				}
			},
			wantDeltas: []string{"a"}, wantFrom: "home-1", wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := &fixture{}
			if tt.setup != nil {
				tt.setup(fx)
			}
			r := newTestRouter(t, fx, testConfig())
			var deltas []string
			from := ""
			err := r.Stream(context.Background(), req(), func(c *detourv1.CompleteChunk) error {
				deltas = append(deltas, c.GetDelta())
				from = c.GetServedBy().GetBackend()
				return nil
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("Stream error = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(deltas, tt.wantDeltas); diff != "" {
				t.Errorf("deltas (-got +want):\n%s", diff)
			}
			if from != tt.wantFrom {
				t.Errorf("served by %q, want %q", from, tt.wantFrom)
			}
			if tt.wantErr && fx.provider("near-1").calls.Load() != 0 {
				t.Error("failed over after the first chunk was sent")
			}
		})
	}
}

func TestBalancesByInflight(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions[0].Backends = append(cfg.Regions[0].Backends, regions.Backend{Name: "home-2", Endpoint: "http://127.0.0.1:1/v1"})
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	// home-1 holds every call until the test ends (or the call's context
	// does): a call sent there by mistake fails the test instead of
	// hanging it, and more than one held call never blocks on started.
	fx.provider("home-1").complete = func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
			return &detourv1.CompleteResponse{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r := newTestRouter(t, fx, cfg)
	// Hold calls on home-1 until one is in flight there.
	var wg sync.WaitGroup
	defer func() { close(release); wg.Wait() }()
	for {
		wg.Add(1)
		go func() { defer wg.Done(); r.Complete(context.Background(), req()) }()
		select {
		case <-started:
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	// With home-1 busy with one call, idle home-2 must win every choice of two.
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := r.Complete(ctx, req())
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v (sent to the held home-1?)", i, err)
		}
		if got := resp.GetServedBy().GetBackend(); got != "home-2" {
			t.Fatalf("call %d served by %s, want home-2 while home-1 has a call in flight", i, got)
		}
	}
}

func TestBusyRetryLeavesTheRegion(t *testing.T) {
	fx := &fixture{}
	cfg := testConfig()
	cfg.Regions[0].Backends = append(cfg.Regions[0].Backends, regions.Backend{Name: "home-2", Endpoint: "http://127.0.0.1:1/v1"})
	fx.provider("home-1").complete = busy
	fx.provider("home-2").complete = busy
	r := newTestRouter(t, fx, cfg)
	for i := range 10 {
		resp, err := r.Complete(context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetServedBy().GetRegion(); got != "near" {
			t.Fatalf("call %d: retry served from region %q, want near (the busy region is tried last)", i, got)
		}
	}
}

// TestUnansweredBackendIsNotFree: a backend with a call in flight that has
// not answered one yet is not cheaper than an idle one that answers in
// 50 ms (it cost nothing, and won every choice while its calls hung:
// TestBalancesByInflight hung under -race once the idle backend's answers
// took over a millisecond).
func TestUnansweredBackendIsNotFree(t *testing.T) {
	now := time.Now()
	held := &backend{live: &live{}, cfg: regions.Backend{Name: "held"}}
	held.inflight.Store(1)
	answers := &backend{live: &live{}, cfg: regions.Backend{Name: "answers"}}
	answers.load.observe(now, 50*time.Millisecond)
	if h, a := held.score(now, ""), answers.score(now, ""); h <= a {
		t.Errorf("score of a backend holding an unanswered call %.4f <= an idle answering one's %.4f", h, a)
	}
	fresh := &backend{live: &live{}, cfg: regions.Backend{Name: "fresh"}}
	if f, a := fresh.score(now, ""), answers.score(now, ""); f >= a {
		t.Errorf("score of a fresh idle backend %.4f >= an answering one's %.4f: new backends should get calls", f, a)
	}
}
