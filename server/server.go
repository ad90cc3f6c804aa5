// Package server exposes a router.Router as the detour.v1.Router gRPC
// service: it validates requests, applies the default deadline, turns panics
// into INTERNAL, maps routing failures to gRPC statuses from one table, and
// registers grpc.health.v1 and server reflection.
package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/hop"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// MaxRequestBytes is the transport's ceiling on one encoded request; the
	// live config's limits.max_request_bytes applies below it. Zero means
	// 64 MiB.
	MaxRequestBytes int
	// Logger receives errors and panics. Nil uses slog.Default().
	Logger *slog.Logger
	// GRPCOptions are appended to the server's own options. They must not
	// set grpc.InTapHandle: the server's admission control is one.
	GRPCOptions []grpc.ServerOption
	// Metrics records per-call metrics. Nil records nothing.
	Metrics *metrics.Metrics
	// LogCalls logs one line per call (never prompts, answers or keys).
	LogCalls bool
	// CallLog receives those lines, each in one Write, formatted as slog's
	// JSONHandler writes them but without going through slog (a few per
	// cent of the CPU per call). Nil sends them through Logger.
	CallLog io.Writer
	// ReturnRequestID sends each call's request id (the caller's
	// x-request-id, or the one detour made) back in an x-request-id
	// response header. Off by default, as in Envoy: a header with a fresh
	// value on every answer cannot be compressed by HPACK and cost 4 µs of
	// detour's CPU and 3 µs of the caller's per call in bench cachehit.
	ReturnRequestID bool
	// StreamWorkers is the number of goroutines kept to run calls
	// (grpc.NumStreamWorkers): a call reuses a goroutine whose stack has
	// already grown to the depth of detour's call path instead of growing a
	// fresh one, and a call that finds every worker busy gets its own
	// goroutine as without workers. Zero means max(64, 16 x GOMAXPROCS);
	// negative means none (a new goroutine per call).
	StreamWorkers int
}

// Server is the gRPC front of detour. It is safe for concurrent use.
type Server struct {
	detourv1.UnimplementedRouterServer
	router *router.Router
	opts   Options
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server
	admit  *admission  // limits.max_inflight, shared by the gRPC and HTTP faces
	cut    atomic.Bool // Shutdown's grace ended: calls still running are cut
}

// New returns a Server routing through r.
func New(r *router.Router, opts Options) *Server {
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = maxRequestCeiling
	}
	s := &Server{router: r, opts: opts, log: opts.Logger, health: health.NewServer()}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.admit = newAdmission(r, opts.Metrics, s.log)
	workers := opts.StreamWorkers
	if workers == 0 {
		workers = max(64, 16*runtime.GOMAXPROCS(0))
	}
	gopts := []grpc.ServerOption{}
	if workers > 0 {
		gopts = append(gopts, grpc.NumStreamWorkers(uint32(workers)))
	}
	gopts = append(append(gopts,
		// The live limit (limits.max_request_bytes) is checked per call with a
		// field-level INVALID_ARGUMENT; this ceiling stops the transport from
		// reading anything larger at all (RESOURCE_EXHAUSTED).
		grpc.MaxRecvMsgSize(opts.MaxRequestBytes),
		// Invalid UTF-8 in a request is the caller's INVALID_ARGUMENT, not
		// grpc-go's INTERNAL (codec.go).
		grpc.ForceServerCodecV2(newCodec()),
		// Admission control (limits.max_inflight, see admit.go) refuses a
		// call before its goroutine starts or its request is read.
		grpc.InTapHandle(s.admit.tap),
		grpc.ChainUnaryInterceptor(s.unaryGuard),
		grpc.ChainStreamInterceptor(s.streamGuard),
	), opts.GRPCOptions...)
	s.grpc = grpc.NewServer(gopts...)
	detourv1.RegisterRouterServer(s.grpc, s)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(detourv1.Router_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s
}

// GRPC returns the underlying server, for registering more services (Admin)
// before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// HealthServer returns the grpc.health.v1 service of s, to serve the same
// statuses on another listener too (detour serve --health-listen, a
// plaintext port for the kubelet's probes): Shutdown's NOT_SERVING and
// SetConfigLive show there as on s's own listener.
func (s *Server) HealthServer() healthpb.HealthServer { return s.health }

// Serve accepts connections on lis until Shutdown or Stop.
func (s *Server) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// Shutdown stops accepting calls, reports NOT_SERVING to health checks, and
// waits for in-flight calls to finish. When ctx ends first, the remaining
// calls are cancelled, and logged as cut by shutdown.
func (s *Server) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.cut.Store(true) // before Stop cancels the calls: see cutOr
		s.grpc.Stop()
		<-done
	}
}

// errCut is the status of a call still running when Shutdown's grace
// ended: the server cut it, its caller did not cancel it. Its connection is
// closed by then (the caller sees UNAVAILABLE); this status is what the
// call's log line and metrics record.
var errCut = status.Error(codes.Unavailable, "call cut by shutdown: still running when the grace period (--grace) ended")

// cutOr returns errCut for a call that ended canceled once Shutdown's grace
// had ended, and err otherwise.
func (s *Server) cutOr(err error) error {
	if err != nil && s.cut.Load() && status.Code(err) == codes.Canceled {
		return errCut
	}
	return err
}

// Complete implements detour.v1.Router.
func (s *Server) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return s.complete(ctx, "Complete", req)
}

// StreamComplete implements detour.v1.Router.
func (s *Server) StreamComplete(req *detourv1.CompleteRequest, stream grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
	return s.stream(stream.Context(), "StreamComplete", req, stream.Send)
}

// unaryGuard applies the default deadline and turns a panic into INTERNAL.
func (s *Server) unaryGuard(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer s.recover(info.FullMethod, &err)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.limits().deadline)
		defer cancel()
	}
	return h(ctx, req)
}

func (s *Server) streamGuard(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer s.recover(info.FullMethod, &err)
	// A Watch of a job lasts as long as the job, not a call's deadline.
	if _, ok := ss.Context().Deadline(); !ok && info.FullMethod != detourv1.Jobs_Watch_FullMethodName {
		ctx, cancel := context.WithTimeout(ss.Context(), s.limits().deadline)
		defer cancel()
		ss = &ctxStream{ServerStream: ss, ctx: ctx}
	}
	return h(srv, ss)
}

func (s *Server) recover(method string, err *error) {
	if p := recover(); p != nil {
		s.log.Error("panic in handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// maxRequestCeiling is the default transport ceiling on a request.
const maxRequestCeiling = 64 << 20

type limits struct {
	requestBytes int
	deadline     time.Duration
	maxHops      int
}

// limits returns the live config's request limits, defaults applied.
func (s *Server) limits() limits {
	l := s.router.Snapshot().Config.Limits
	out := limits{requestBytes: l.MaxRequestBytes, deadline: l.DefaultDeadline.D(), maxHops: l.MaxHops}
	if out.maxHops <= 0 {
		out.maxHops = hop.DefaultMax
	}
	if out.requestBytes <= 0 {
		out.requestBytes = regions.DefaultMaxRequestBytes
	}
	out.requestBytes = min(out.requestBytes, s.opts.MaxRequestBytes)
	if out.deadline <= 0 {
		out.deadline = regions.DefaultDeadline
	}
	return out
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }
