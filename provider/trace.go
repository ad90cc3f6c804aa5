package provider

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/metadata"
)

// injectTrace passes the caller's trace context (W3C traceparent with the
// global propagator) to an upstream. It does nothing when no propagator is
// installed, so it costs nothing with tracing off.
func injectTrace(ctx context.Context, set func(k, v string)) {
	p := otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		return
	}
	p.Inject(ctx, setter(set))
}

// setter adapts a header or metadata setter to a propagation.TextMapCarrier;
// the propagator only sets.
type setter func(k, v string)

var _ propagation.TextMapCarrier = setter(nil)

func (s setter) Get(string) string { return "" }
func (s setter) Set(k, v string)   { s(k, v) }
func (s setter) Keys() []string    { return nil }

// outgoingTrace adds the trace context to gRPC metadata.
func outgoingTrace(ctx context.Context) context.Context {
	var kv []string
	injectTrace(ctx, func(k, v string) { kv = append(kv, k, v) })
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
