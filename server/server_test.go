package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/detour-dev/detour/internal/testkit"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// panicky is a provider that panics, to check the server survives it.
type panicky struct{}

func (panicky) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	panic("provider bug")
}

func (panicky) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	panic("provider bug")
}

var _ router.Provider = panicky{}

func TestPanicBecomesInternal(t *testing.T) {
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: "http://127.0.0.1:1/v1"}}}}}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{
		NewProvider: func(regions.Backend) (router.Provider, error) { return panicky{}, nil },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	s := New(rt, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	defer s.Shutdown(context.Background())
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := detourv1.NewRouterClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: "x"}}}
	for range 2 { // the second call proves the process lives on
		_, err := c.Complete(ctx, req)
		if got := status.Code(err); got != codes.Internal {
			t.Fatalf("Complete code = %v (%v), want Internal", got, err)
		}
		st, err := c.StreamComplete(ctx, req)
		if err == nil {
			_, err = st.Recv()
		}
		if got := status.Code(err); got != codes.Internal {
			t.Fatalf("StreamComplete code = %v (%v), want Internal", got, err)
		}
	}
}

func TestToStatus(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tests := []struct {
		name      string
		err       error
		wantCode  codes.Code
		wantRetry time.Duration
	}{
		{name: "deadline", err: context.DeadlineExceeded, wantCode: codes.DeadlineExceeded},
		{name: "canceled", err: context.Canceled, wantCode: codes.Canceled},
		{name: "unavailable", err: &router.Error{Code: router.Unavailable, Message: "busy", RetryAfter: 2 * time.Second}, wantCode: codes.Unavailable, wantRetry: 2 * time.Second},
		{name: "exhausted", err: &router.Error{Code: router.Exhausted, Message: "limited", RetryAfter: time.Second}, wantCode: codes.ResourceExhausted, wantRetry: time.Second},
		{name: "unknown model", err: &router.Error{Code: router.UnknownModel, Message: "no"}, wantCode: codes.NotFound},
		{name: "rejected", err: &router.Error{Code: router.Rejected, Message: "bad", UpstreamStatus: 400}, wantCode: codes.InvalidArgument},
		{name: "rejected 422", err: &router.Error{Code: router.Rejected, Message: "bad", UpstreamStatus: 422}, wantCode: codes.InvalidArgument},
		{name: "a routing error that wraps an attempt timeout is not the caller's deadline",
			err:      &router.Error{Code: router.Unavailable, Message: "busy", RetryAfter: time.Second, Err: fmt.Errorf("attempt: %w", context.DeadlineExceeded)},
			wantCode: codes.Unavailable, wantRetry: time.Second},
		{name: "internal hides detail", err: &router.Error{Code: router.Internal, Message: "creds", Err: errors.New("secret detail")}, wantCode: codes.Internal},
		{name: "plain error", err: errors.New("boom"), wantCode: codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := status.Convert(toStatus(log, tt.err))
			var retry time.Duration
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					retry = ri.GetRetryDelay().AsDuration()
				}
			}
			if diff := cmp.Diff([]any{st.Code(), retry}, []any{tt.wantCode, tt.wantRetry}); diff != "" {
				t.Errorf("(code, retry) (-got +want):\n%s", diff)
			}
			if strings.Contains(st.Message(), "secret detail") || strings.Contains(st.Message(), "boom") {
				t.Errorf("message %q leaks internal detail", st.Message())
			}
		})
	}
}

// busyProvider answers every call busy.
type busyProvider struct{}

type busyErr struct{}

func (busyErr) Error() string   { return "HTTP 503: server busy" }
func (busyErr) StatusCode() int { return 503 }

func (busyProvider) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return nil, busyErr{}
}

func (busyProvider) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	return nil, busyErr{}
}

// TestFailedCacheableCallIsLoggedWithItsBackend: a cacheable call runs as a
// shared (coalesced) upstream call that fills no caller's stats; when it
// fails, its call line still names the backend that failed and the attempts
// made (it used to say attempts 0 and no backend). And an attempt's own
// timeout is the backend's, not the caller's deadline.
func TestFailedCacheableCallIsLoggedWithItsBackend(t *testing.T) {
	cfg := &regions.Config{
		Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: "http://127.0.0.1:1/v1"}}}},
		Retry:   regions.RetryPolicy{MaxAttempts: 2, BackoffBase: regions.Duration(time.Millisecond), BackoffMax: regions.Duration(time.Millisecond)},
	}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{
		NewProvider: func(regions.Backend) (router.Provider, error) { return busyProvider{}, nil },
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	logs := &testkit.Buffer{}
	s := New(rt, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), LogCalls: true, CallLog: logs})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	zero := 0.0
	req := &detourv1.CompleteRequest{Model: "m", Temperature: &zero, Messages: []*detourv1.Message{{Role: "user", Content: "x"}}}
	if _, err := detourv1.NewRouterClient(conn).Complete(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("Complete: %v, want Unavailable", err)
	}
	s.Shutdown(context.Background()) // flushes the call lines
	line := logs.String()
	for _, want := range []string{`"backend":"a-1"`, `"attempts":2`, `"code":"Unavailable"`} {
		if !strings.Contains(line, want) {
			t.Errorf("call line lacks %s:\n%s", want, line)
		}
	}
}
