package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// lockedBuffer collects log lines written from many goroutines.
type lockedBuffer = testkit.Buffer

// runMain runs m in process until the test ends and returns its Router and
// /metrics addresses (the latter nil without --metrics).
func runMain(t *testing.T, m *Main) (addr, metricsAddr net.Addr) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc, maddrc := make(chan net.Addr, 1), make(chan net.Addr, 1)
	m.ready = func(a net.Addr) { addrc <- a }
	m.metricsReady = func(a net.Addr) { maddrc <- a }
	if m.Logger == nil {
		m.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("detour did not start: %v", err)
	}
	select {
	case metricsAddr = <-maddrc:
	default:
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("detour Run: %v", err)
		}
	})
	return addr, metricsAddr
}

// scrape reads /metrics and returns the families by name.
func scrape(t *testing.T, addr net.Addr) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of family name whose labels include
// want, and whether it exists.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsAfterRealCalls(t *testing.T) {
	home := startFake(t, fakellm.Config{Region: "home", Name: "home-1", Settings: fakellm.Settings{BusyRate: 1}}, false)
	away := startFake(t, fakellm.Config{Region: "away", Name: "away-1"}, false)
	fb := startFake(t, fakellm.Config{Region: "fb", Name: "fb-1"}, false)
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", home)}},
			{Name: "away", Priority: 1, Backends: []regions.Backend{openaiBackend("away-1", away)}},
		},
		Fallbacks: []regions.Backend{openaiBackend("fb-1", fb)},
		Breaker:   regions.BreakerPolicy{ConsecutiveBusy: 3, OpenFor: regions.Duration(time.Hour)},
		Retry:     regions.RetryPolicy{MaxAttempts: 2},
	}
	logs := &lockedBuffer{}
	m := &Main{Listen: "127.0.0.1:0", Region: "home", Grace: 5 * time.Second, config: cfg,
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
		Observe: ObserveOptions{MetricsAddr: "127.0.0.1:0", LogCalls: true}}
	addr, maddr := runMain(t, m)
	if maddr == nil {
		t.Fatal("no /metrics listener")
	}
	c := dial(t, addr.String())
	const calls = 6
	for range calls {
		if _, err := c.Complete(callCtx(t), userReq("count me")); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.StreamComplete(callCtx(t), userReq("stream me"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); err != nil {
			break
		}
	}
	if _, err := c.Complete(callCtx(t), &detourv1.CompleteRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty request: %v, want InvalidArgument", err)
	}
	// Make away-1 busy too: the next call is answered by the fallback.
	postControl(t, away, `{"busy_rate":1}`)
	resp, err := c.Complete(callCtx(t), userReq("fall back"))
	if err != nil || resp.GetSource() != detourv1.Source_SOURCE_FALLBACK {
		t.Fatalf("fallback call: %v, source %v", err, resp.GetSource())
	}

	fams := scrape(t, maddr)
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"detour_calls_total", map[string]string{"method": "Complete", "code": "OK", "source": "live"}, calls},
		{"detour_calls_total", map[string]string{"method": "StreamComplete", "code": "OK", "source": "live"}, 1},
		{"detour_calls_total", map[string]string{"method": "Complete", "code": "InvalidArgument", "source": "none"}, 1},
		{"detour_calls_total", map[string]string{"method": "Complete", "code": "OK", "source": "fallback"}, 1},
		// home-1 is busy: 3 busy answers open its breaker, then it is skipped.
		{"detour_upstream_attempts_total", map[string]string{"backend": "home-1", "region": "home", "outcome": "busy"}, 3},
		{"detour_upstream_attempts_total", map[string]string{"backend": "away-1", "outcome": "ok"}, calls + 1},
		{"detour_upstream_attempts_total", map[string]string{"backend": "fb-1", "outcome": "ok"}, 1},
		{"detour_breaker_state", map[string]string{"backend": "home-1"}, 2},
		{"detour_breaker_state", map[string]string{"backend": "away-1"}, 0},
		{"detour_breaker_transitions_total", map[string]string{"backend": "home-1", "to": "open"}, 1},
		// 3 retries after home-1's busy answers, 1 more on away-1 (the
		// only primary left) before the fallback answers.
		{"detour_retries_total", nil, 4},
		{"detour_inflight", map[string]string{"backend": "away-1"}, 0},
		{"detour_upstream_connections_total", map[string]string{"backend": "away-1", "reused": "false"}, 1},
		{"detour_upstream_connections_total", map[string]string{"backend": "away-1", "reused": "true"}, calls + 2}, // 6 unary, 1 stream, 2 busy, less the first dial
		{"detour_config_applies_total", nil, 1},
		{"detour_config_last_known_good", nil, 0},
		{"detour_call_duration_seconds", map[string]string{"method": "Complete"}, calls + 2},
		{"detour_overhead_seconds", map[string]string{"method": "Complete"}, calls + 2},
		{"detour_first_chunk_seconds", nil, 1},
	}
	for _, tt := range tests {
		got, ok := value(fams, tt.name, tt.labels)
		if !ok || got != tt.want {
			t.Errorf("%s%v = %v (present %v), want %v", tt.name, tt.labels, got, ok, tt.want)
		}
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("standard series %s missing", name)
		}
	}
	// One log line per call, with what operators need and no prompt.
	lines := strings.Count(logs.String(), `"msg":"call"`)
	if lines != calls+3 {
		t.Errorf("%d call log lines, want %d", lines, calls+3)
	}
	for _, field := range []string{`"request_id"`, `"tenant":"default"`, `"backend":"away-1"`, `"attempts"`, `"source":"live"`, `"latency_us"`, `"code":"OK"`} {
		if !strings.Contains(logs.String(), field) {
			t.Errorf("call log lacks %s", field)
		}
	}
	if strings.Contains(logs.String(), "count me") {
		t.Error("a prompt reached the log")
	}
}

func dial(t *testing.T, addr string) detourv1.RouterClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return detourv1.NewRouterClient(conn)
}

// TestPprofOptIn: the profiler is on the metrics listener only with --pprof.
func TestPprofOptIn(t *testing.T) {
	fk := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", fk)}}}}
	for _, on := range []bool{false, true} {
		m := &Main{Listen: "127.0.0.1:0", Region: "home", Grace: time.Second, config: cfg,
			Observe: ObserveOptions{MetricsAddr: "127.0.0.1:0", Pprof: on}}
		_, maddr := runMain(t, m)
		resp, err := http.Get("http://" + maddr.String() + "/debug/pprof/cmdline")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("--pprof=%t: GET /debug/pprof/cmdline = %d, want %d", on, resp.StatusCode, want)
		}
	}
}
