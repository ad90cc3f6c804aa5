package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"google.golang.org/grpc"

	"github.com/detour-dev/detour/metrics"
)

// ObserveOptions are the metrics, tracing and call-log settings of serve.
type ObserveOptions struct {
	// MetricsAddr is the address of the /metrics listener; empty turns it off.
	MetricsAddr string
	// OTLPEndpoint is the OTLP/gRPC collector traces go to; empty turns
	// tracing off.
	OTLPEndpoint string
	// OTLPInsecure sends traces without TLS.
	OTLPInsecure bool
	// TraceSample is the share of new traces sampled (parent-based).
	TraceSample float64
	// LogCalls logs one JSON line per call.
	LogCalls bool
	// ReturnRequestID sends x-request-id back in each answer's headers.
	ReturnRequestID bool
	// Pprof serves net/http/pprof under /debug/pprof/ on the metrics
	// listener.
	Pprof bool
}

func (o *ObserveOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics", "", "address of the Prometheus /metrics listener, e.g. 127.0.0.1:9090 (empty: off)")
	fs.StringVar(&o.OTLPEndpoint, "otlp-endpoint", "", "OTLP/gRPC collector for traces, host:port (empty: tracing off)")
	fs.BoolVar(&o.OTLPInsecure, "otlp-insecure", false, "send traces to the collector without TLS")
	fs.Float64Var(&o.TraceSample, "trace-sample", 1, "share of new traces sampled, 0..1 (callers' sampled traces are always kept)")
	fs.BoolVar(&o.LogCalls, "log-calls", true, "log one JSON line per call (never prompts, answers or keys)")
	fs.BoolVar(&o.ReturnRequestID, "return-request-id", false, "send each call's request id (the caller's x-request-id, or the one detour made for its log line) back in an x-request-id response header")
	fs.BoolVar(&o.Pprof, "pprof", false, "also serve Go's profiler (/debug/pprof/) on the --metrics listener; keep that port private")
}

func (o *ObserveOptions) problems() []string {
	var p []string
	if o.TraceSample < 0 || o.TraceSample > 1 {
		p = append(p, "--trace-sample must be in [0, 1]")
	}
	if o.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
			p = append(p, fmt.Sprintf("--metrics %q: %v", o.MetricsAddr, err))
		}
	}
	if o.Pprof && o.MetricsAddr == "" {
		p = append(p, "--pprof needs --metrics: the profiler is served on the metrics listener")
	}
	return p
}

// observability is the running metrics listener and tracer provider.
type observability struct {
	metrics  *metrics.Metrics
	srv      *http.Server
	lis      net.Listener
	served   chan struct{}
	tp       *sdktrace.TracerProvider
	grpcOpts []grpc.ServerOption
}

// startObservability starts the /metrics listener and, with an OTLP endpoint,
// the tracer provider. Close stops both.
func startObservability(ctx context.Context, o ObserveOptions, log *slog.Logger) (*observability, error) {
	ob := &observability{metrics: metrics.New()}
	if o.OTLPEndpoint != "" {
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(o.OTLPEndpoint)}
		if o.OTLPInsecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		ob.tp = sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(exp),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.TraceSample))),
			sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName("detour"))),
		)
		otel.SetTracerProvider(ob.tp)
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
		ob.grpcOpts = append(ob.grpcOpts, grpc.StatsHandler(otelgrpc.NewServerHandler()))
		log.Info("tracing on", "otlp_endpoint", o.OTLPEndpoint, "sample", o.TraceSample)
	}
	if o.MetricsAddr != "" {
		lis, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			ob.Close()
			return nil, fmt.Errorf("metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", ob.metrics.Handler())
		if o.Pprof {
			mux.HandleFunc("GET /debug/pprof/", pprof.Index)
			mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
			log.Warn("profiler on the metrics listener: /debug/pprof/ (keep the port private)", "addr", lis.Addr().String())
		}
		ob.lis, ob.served = lis, make(chan struct{})
		ob.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			defer close(ob.served)
			if err := ob.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", "err", err)
			}
		}()
		log.Info("metrics serving", "addr", lis.Addr().String())
	}
	return ob, nil
}

// MetricsAddr returns the bound /metrics address, or nil.
func (ob *observability) MetricsAddr() net.Addr {
	if ob.lis == nil {
		return nil
	}
	return ob.lis.Addr()
}

// Close stops the metrics listener and flushes pending spans.
func (ob *observability) Close() {
	if ob.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ob.srv.Shutdown(ctx)
		cancel()
		<-ob.served
	}
	if ob.tp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ob.tp.Shutdown(ctx)
		cancel()
	}
}
