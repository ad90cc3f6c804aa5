package router

import (
	"context"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// The global tracer provider is set once per test binary: the package's
// tracer delegates to the first provider set and keeps it (otel's global
// delegation), so each run of the test resets the exporter instead.
var (
	traceOnce sync.Once
	traceExp  *tracetest.InMemoryExporter
	traceTP   *sdktrace.TracerProvider
)

// TestSpanPerAttempt: each upstream attempt is one client span under the
// caller's span, with its backend and outcome.
func TestSpanPerAttempt(t *testing.T) {
	traceOnce.Do(func() {
		traceExp = tracetest.NewInMemoryExporter()
		traceTP = sdktrace.NewTracerProvider(sdktrace.WithSyncer(traceExp))
		otel.SetTracerProvider(traceTP)
	})
	exp, tp := traceExp, traceTP
	exp.Reset()

	fx := &fixture{}
	fx.provider("home-1").complete = busy
	r := newTestRouter(t, fx, testConfig())
	ctx, parent := tp.Tracer("test").Start(context.Background(), "caller")
	if _, err := r.Complete(ctx, req()); err != nil {
		t.Fatal(err)
	}
	parent.End()

	type span struct{ Backend, Outcome string }
	var got []span
	for _, s := range exp.GetSpans() {
		if s.Name != "detour.attempt" {
			continue
		}
		if s.Parent.SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("attempt span's parent is %v, want the caller's span", s.Parent.SpanID())
		}
		attrs := map[attribute.Key]string{}
		for _, a := range s.Attributes {
			attrs[a.Key] = a.Value.Emit()
		}
		got = append(got, span{Backend: attrs["detour.backend"], Outcome: attrs["detour.outcome"]})
	}
	want := []span{{Backend: "home-1", Outcome: "busy"}, {Backend: "near-1", Outcome: "ok"}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("attempt spans (-got +want):\n%s", diff)
	}
}
