package provider

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// fakeRouter is a detour.v1.Router whose methods are the test's functions.
type fakeRouter struct {
	detourv1.UnimplementedRouterServer
	complete func(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error)
	stream   func(*detourv1.CompleteRequest, grpc.ServerStreamingServer[detourv1.CompleteChunk]) error
}

var _ detourv1.RouterServer = (*fakeRouter)(nil)

func (f *fakeRouter) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return f.complete(ctx, req)
}

func (f *fakeRouter) StreamComplete(req *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
	return f.stream(req, st)
}

// newGRPCServer serves f on loopback until the test ends and returns its
// address.
func newGRPCServer(t *testing.T, f *fakeRouter) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	detourv1.RegisterRouterServer(s, f)
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		<-served
	})
	return lis.Addr().String()
}

// newDetour returns a client for addr, closed when the test ends.
func newDetour(t *testing.T, addr, key string) *Detour {
	t.Helper()
	d, err := NewDetour(backendFor(t, "detour", addr, key))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	return strings.Join(md.Get("authorization"), ",")
}

func TestDetourComplete(t *testing.T) {
	req := &detourv1.CompleteRequest{
		Model:       "deepseek-chat",
		Messages:    []*detourv1.Message{{Role: "user", Content: "hi", Name: "ann"}},
		Temperature: proto.Float64(0.2),
		Routing:     &detourv1.RoutingHints{NoFallback: true},
	}
	want := &detourv1.CompleteResponse{
		Id: "c1", Model: "deepseek-chat", Content: "Hello", FinishReason: "stop",
		Usage:    &detourv1.Usage{PromptTokens: 1, CompletionTokens: 1, TotalTokens: 2},
		ServedBy: &detourv1.ServedBy{Region: "eu", Backend: "ds-1", Kind: detourv1.ProviderKind_PROVIDER_KIND_OPENAI},
		Source:   detourv1.Source_SOURCE_LIVE,
		Attempts: 1,
	}
	tests := []struct {
		name     string
		key      string
		wantAuth string
	}{
		{name: "with key", key: "sk-1", wantAuth: "Bearer sk-1"},
		{name: "without key", wantAuth: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotReq *detourv1.CompleteRequest
			var gotAuth string
			addr := newGRPCServer(t, &fakeRouter{
				complete: func(ctx context.Context, r *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
					gotReq, gotAuth = r, bearer(ctx)
					return want, nil
				},
			})
			d := newDetour(t, addr, tt.key)

			got, err := d.Complete(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(req, gotReq, protocmp.Transform()); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
			if gotAuth != tt.wantAuth {
				t.Errorf("authorization = %q, want %q", gotAuth, tt.wantAuth)
			}
		})
	}
}

func TestDetourStream(t *testing.T) {
	want := []*detourv1.CompleteChunk{
		{Id: "c1", Delta: "Hel"},
		{Id: "c1", Delta: "lo"},
		{Id: "c1", FinishReason: "stop", Usage: &detourv1.Usage{TotalTokens: 2}},
	}
	var gotAuth string
	addr := newGRPCServer(t, &fakeRouter{
		stream: func(_ *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
			gotAuth = bearer(st.Context())
			for _, c := range want {
				if err := st.Send(c); err != nil {
					return err
				}
			}
			return nil
		},
	})
	d := newDetour(t, addr, "sk-1")

	st, err := d.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	var got []*detourv1.CompleteChunk
	for {
		c, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d chunks: %v", len(got), err)
		}
		got = append(got, c)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("chunks (-want +got):\n%s", diff)
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Errorf("Recv after the end = %v, want io.EOF", err)
	}
	for range 2 {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if gotAuth != "Bearer sk-1" {
		t.Errorf("authorization = %q, want %q", gotAuth, "Bearer sk-1")
	}
}

func TestDetourErrors(t *testing.T) {
	const key = "sk-live-0123456789abcdef"
	retry := func(code codes.Code, msg string, d time.Duration) error {
		s, err := status.New(code, msg).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			t.Fatal(err)
		}
		return s.Err()
	}
	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		want     errCheck
	}{
		{
			name:     "unavailable",
			err:      status.Error(codes.Unavailable, "server busy"),
			wantCode: codes.Unavailable,
			want:     errCheck{class: breaker.Busy, contains: "server busy"},
		},
		{
			name:     "resource exhausted with retry info",
			err:      retry(codes.ResourceExhausted, "every backend is busy", 3*time.Second),
			wantCode: codes.ResourceExhausted,
			want:     errCheck{class: breaker.Busy, retryAfter: 3 * time.Second, contains: "every backend is busy"},
		},
		{
			name:     "invalid argument",
			err:      status.Error(codes.InvalidArgument, "model is required"),
			wantCode: codes.InvalidArgument,
			want:     errCheck{class: breaker.Client, contains: "model is required"},
		},
		{
			name:     "internal",
			err:      status.Error(codes.Internal, "boom"),
			wantCode: codes.Internal,
			want:     errCheck{class: breaker.Failed, contains: "boom"},
		},
		{
			name:     "key echoed, details kept",
			err:      retry(codes.Unauthenticated, "bad token Bearer "+key, time.Second),
			wantCode: codes.Unauthenticated,
			want:     errCheck{class: breaker.Failed, retryAfter: time.Second, contains: "bad token Bearer [redacted]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := newGRPCServer(t, &fakeRouter{
				complete: func(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
					return nil, tt.err
				},
				stream: func(_ *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
					if err := st.Send(&detourv1.CompleteChunk{Delta: "Hel"}); err != nil {
						return err
					}
					return tt.err
				},
			})
			d := newDetour(t, addr, key)

			_, unaryErr := d.Complete(t.Context(), userRequest("hi"))
			st, err := d.Stream(t.Context(), userRequest("hi"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Recv(); err != nil {
				t.Fatalf("first Recv: %v", err)
			}
			_, streamErr := st.Recv()

			for _, err := range []error{unaryErr, streamErr} {
				tt.want.check(t, err)
				if got := status.Code(err); got != tt.wantCode {
					t.Errorf("status.Code = %v, want %v", got, tt.wantCode)
				}
				var re *RPCError
				if !errors.As(err, &re) {
					t.Errorf("error %T is not an *RPCError", err)
				}
				if strings.Contains(err.Error(), key) {
					t.Errorf("error holds the key: %v", err)
				}
			}
		})
	}
}

func TestDetourConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := newDetour(t, addr, "")

	_, err = d.Complete(t.Context(), userRequest("hi"))
	errCheck{class: breaker.Down}.check(t, err)
	if got := status.Code(err); got != codes.Unavailable {
		t.Errorf("status.Code = %v, want Unavailable", got)
	}
}

// TestDetourHonoursContext: a hanging backend returns once ctx ends, for a
// unary call and in the middle of a stream; closing a stream cancels it
// upstream.
func TestDetourHonoursContext(t *testing.T) {
	upstreamDone := make(chan struct{}, 1)
	addr := newGRPCServer(t, &fakeRouter{
		complete: func(ctx context.Context, _ *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
		stream: func(_ *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
			if err := st.Send(&detourv1.CompleteChunk{Delta: "Hel"}); err != nil {
				return err
			}
			<-st.Context().Done()
			upstreamDone <- struct{}{}
			return nil
		},
	})
	d := newDetour(t, addr, "")
	want := errCheck{class: breaker.Down}

	t.Run("unary timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := d.Complete(ctx, userRequest("hi"))
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("returned after %v", elapsed)
		}
		want.check(t, err)
		if got := status.Code(err); got != codes.DeadlineExceeded {
			t.Errorf("status.Code = %v, want DeadlineExceeded", got)
		}
	})
	t.Run("mid-stream timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		st, err := d.Stream(ctx, userRequest("hi"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = st.Recv()
		if elapsed := time.Since(start); elapsed > 5*time.Second {
			t.Errorf("returned after %v", elapsed)
		}
		want.check(t, err)
		<-upstreamDone
	})
	t.Run("close cancels upstream", func(t *testing.T) {
		st, err := d.Stream(t.Context(), userRequest("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		st.Close()
		<-upstreamDone
		if _, err := st.Recv(); err == nil || err == io.EOF {
			t.Errorf("Recv after Close = %v, want an error", err)
		}
	})
}

func TestNewDetour(t *testing.T) {
	tests := []struct {
		name    string
		backend regions.Backend
		wantErr string
	}{
		{name: "openai kind", backend: regions.Backend{Name: testBackend, Kind: "openai", Endpoint: "127.0.0.1:1"}, wantErr: `kind "openai" is not "detour"`},
		{name: "no endpoint", backend: regions.Backend{Name: testBackend, Kind: "detour"}, wantErr: "endpoint is required"},
		{name: "key env unset", backend: regions.Backend{Name: testBackend, Kind: "detour", Endpoint: "127.0.0.1:1", APIKeyEnv: "DETOUR_KEY_TEST_UNSET"}, wantErr: "DETOUR_KEY_TEST_UNSET is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDetour(tt.backend)
			if err == nil {
				d.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
