package provider

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TestTraceContextReachesUpstream: with a W3C propagator installed, the
// caller's trace id reaches an HTTP upstream in traceparent.
func TestTraceContextReachesUpstream(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	got := make(chan string, 1)
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("traceparent")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"id":"x","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}`))
	})
	o := newOpenAI(t, ts.URL, "")
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled,
	}))
	if _, err := o.Complete(ctx, userRequest("hi")); err != nil {
		t.Fatal(err)
	}
	if tp := <-got; !strings.Contains(tp, tid.String()) {
		t.Errorf("traceparent %q does not carry trace id %s", tp, tid)
	}
}
