package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func TestMain(m *testing.M) {
	// The SIGTERM test re-runs this binary as the detour daemon.
	if os.Getenv("DETOUR_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// startFake starts a simulated backend on loopback and stops it at cleanup.
func startFake(t *testing.T, cfg fakellm.Config, withGRPC bool) *fakellm.Server {
	t.Helper()
	f := fakellm.New(cfg)
	g := ""
	if withGRPC {
		g = "127.0.0.1:0"
	}
	if err := f.Start("127.0.0.1:0", g); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func openaiBackend(name string, f *fakellm.Server) regions.Backend {
	return regions.Backend{Name: name, Endpoint: "http://" + f.HTTPAddr() + "/v1"}
}

// startDetour runs Main in process on a loopback port and returns a client.
func startDetour(t *testing.T, cfg *regions.Config, region string) detourv1.RouterClient {
	t.Helper()
	addr, _ := runMain(t, &Main{Listen: "127.0.0.1:0", Region: region, Grace: 5 * time.Second, config: cfg})
	return dial(t, addr.String())
}

func userReq(prompt string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{{Role: "user", Content: prompt}}}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// twoKinds: region "http" served over OpenAI HTTP, region "grpc" over detour gRPC.
func twoKinds(t *testing.T) (*regions.Config, *fakellm.Server, *fakellm.Server) {
	h := startFake(t, fakellm.Config{Region: "http", Name: "http-1"}, false)
	g := startFake(t, fakellm.Config{Region: "grpc", Name: "grpc-1"}, true)
	cfg := &regions.Config{Regions: []regions.Region{
		{Name: "http", Backends: []regions.Backend{openaiBackend("http-1", h)}},
		{Name: "grpc", Priority: 1, Backends: []regions.Backend{{Name: "grpc-1", Kind: regions.KindDetour, Endpoint: g.GRPCAddr()}}},
	}}
	return cfg, h, g
}

func TestCompleteBothKinds(t *testing.T) {
	cfg, _, _ := twoKinds(t)
	c := startDetour(t, cfg, "http")
	tests := []struct {
		region string
		want   *detourv1.ServedBy
	}{
		{region: "http", want: &detourv1.ServedBy{Region: "http", Backend: "http-1", Kind: detourv1.ProviderKind_PROVIDER_KIND_OPENAI}},
		{region: "grpc", want: &detourv1.ServedBy{Region: "grpc", Backend: "grpc-1", Kind: detourv1.ProviderKind_PROVIDER_KIND_DETOUR}},
	}
	for _, tt := range tests {
		t.Run(tt.region, func(t *testing.T) {
			r := userReq("hello there")
			r.Routing = &detourv1.RoutingHints{PreferRegion: tt.region}
			resp, err := c.Complete(callCtx(t), r)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(resp.GetServedBy(), tt.want, cmpProto); diff != "" {
				t.Errorf("served_by (-got +want):\n%s", diff)
			}
			if resp.GetContent() == "" || resp.GetSource() != detourv1.Source_SOURCE_LIVE || resp.GetAttempts() != 1 {
				t.Errorf("got content %q source %v attempts %d, want an answer, LIVE, 1 attempt", resp.GetContent(), resp.GetSource(), resp.GetAttempts())
			}
			if resp.GetUsage().GetTotalTokens() == 0 {
				t.Error("usage.total_tokens is 0")
			}
			// The same prompt gives the same answer (fakellm is deterministic).
			again, err := c.Complete(callCtx(t), r)
			if err != nil {
				t.Fatal(err)
			}
			if again.GetContent() != resp.GetContent() {
				t.Errorf("answers differ for one prompt: %q vs %q", again.GetContent(), resp.GetContent())
			}
		})
	}
}

var cmpProto = cmp.Comparer(proto.Equal)

func TestStreamBothKinds(t *testing.T) {
	cfg, _, _ := twoKinds(t)
	c := startDetour(t, cfg, "http")
	for _, region := range []string{"http", "grpc"} {
		t.Run(region, func(t *testing.T) {
			r := userReq("tell me a long story about routers")
			r.Routing = &detourv1.RoutingHints{PreferRegion: region}
			unary, err := c.Complete(callCtx(t), r)
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.StreamComplete(callCtx(t), r)
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			n, finish := 0, ""
			for {
				ch, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Recv after %d chunks: %v", n, err)
				}
				n++
				text.WriteString(ch.GetDelta())
				if ch.GetServedBy().GetRegion() != region {
					t.Errorf("chunk %d served by region %q, want %q", n, ch.GetServedBy().GetRegion(), region)
				}
				if ch.GetFinishReason() != "" {
					finish = ch.GetFinishReason()
				}
			}
			if n < 3 {
				t.Errorf("got %d chunks, want several", n)
			}
			if finish == "" {
				t.Error("no chunk carried a finish_reason")
			}
			if text.String() != unary.GetContent() {
				t.Errorf("streamed text %q differs from unary answer %q", text.String(), unary.GetContent())
			}
		})
	}
}

func TestBusyRegionIsRoutedAround(t *testing.T) {
	home := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	away := startFake(t, fakellm.Config{Region: "away", Name: "away-1"}, false)
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "home", Backends: []regions.Backend{openaiBackend("home-1", home)}},
			{Name: "away", Priority: 1, Backends: []regions.Backend{openaiBackend("away-1", away)}},
		},
		Breaker: regions.BreakerPolicy{ConsecutiveBusy: 3, OpenFor: regions.Duration(100 * time.Millisecond), HalfOpenProbes: 1},
	}
	c := startDetour(t, cfg, "home")
	served := func(prompt string) (string, int32) {
		t.Helper()
		resp, err := c.Complete(callCtx(t), userReq(prompt))
		if err != nil {
			t.Fatalf("%s: %v", prompt, err)
		}
		return resp.GetServedBy().GetBackend(), resp.GetAttempts()
	}
	if b, _ := served("healthy"); b != "home-1" {
		t.Fatalf("healthy home region: served by %s, want home-1", b)
	}
	// home turns busy at runtime: every call is still answered, by away-1;
	// after 3 busy answers the breaker stops sending calls to home-1.
	postControl(t, home, `{"busy_rate":1}`)
	home.ResetStats()
	var attempts []int32
	for i := range 10 {
		b, n := served(fmt.Sprint("question ", i))
		if b != "away-1" {
			t.Fatalf("call %d served by %s, want away-1 while home is busy", i, b)
		}
		attempts = append(attempts, n)
	}
	if got := home.Stats().Busy; got > 4 {
		t.Errorf("busy home-1 received %d calls, want at most 3 (+1 probe) before its breaker opens", got)
	}
	if attempts[0] != 2 || attempts[9] != 1 {
		t.Errorf("attempts per call %v: want 2 before the breaker opens, 1 after", attempts)
	}
	// home recovers: after the breaker's open period a probe succeeds and
	// home-1 serves again.
	postControl(t, home, `{"busy_rate":0}`)
	eventually(t, 5*time.Second, func() bool { b, _ := served("after recovery"); return b == "home-1" }, "home-1 serves again")
}

func postControl(t *testing.T, f *fakellm.Server, body string) {
	t.Helper()
	resp, err := http.Post("http://"+f.HTTPAddr()+"/control", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /control %s: %s %s", body, resp.Status, b)
	}
}

func TestEverythingBusyIsUnavailableWithRetryInfo(t *testing.T) {
	a := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{BusyRate: 1}}, false)
	fb := startFake(t, fakellm.Config{Region: "fb", Name: "fb-1", Settings: fakellm.Settings{BusyRate: 1}}, false)
	cfg := &regions.Config{
		Regions:   []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", a)}}},
		Fallbacks: []regions.Backend{openaiBackend("fb-1", fb)},
	}
	c := startDetour(t, cfg, "a")
	_, err := c.Complete(callCtx(t), userReq("hi"))
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Fatalf("code = %v (%v), want Unavailable", st.Code(), err)
	}
	var ri *errdetails.RetryInfo
	for _, d := range st.Details() {
		if v, ok := d.(*errdetails.RetryInfo); ok {
			ri = v
		}
	}
	if ri == nil || ri.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("details %v: want a RetryInfo with a positive delay", st.Details())
	}
}

func TestFallbackAnswersWhenPrimariesAreBusy(t *testing.T) {
	a := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{BusyRate: 1}}, false)
	fb := startFake(t, fakellm.Config{Region: "fb", Name: "fb-1"}, false)
	cfg := &regions.Config{
		Regions:   []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", a)}}},
		Fallbacks: []regions.Backend{openaiBackend("fb-1", fb)},
	}
	c := startDetour(t, cfg, "a")
	resp, err := c.Complete(callCtx(t), userReq("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSource() != detourv1.Source_SOURCE_FALLBACK || resp.GetServedBy().GetBackend() != "fb-1" {
		t.Errorf("got source %v from %s, want FALLBACK from fb-1", resp.GetSource(), resp.GetServedBy().GetBackend())
	}
}

func TestValidation(t *testing.T) {
	f := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	cfg := &regions.Config{
		Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", f)}}},
		Limits:  regions.LimitPolicy{MaxRequestBytes: 4096},
	}
	c := startDetour(t, cfg, "a")
	temp, topP := 3.0, 0.0
	tests := []struct {
		name       string
		req        *detourv1.CompleteRequest
		wantFields []string
	}{
		{name: "empty", req: &detourv1.CompleteRequest{}, wantFields: []string{"model", "messages"}},
		{name: "bad role", req: &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "robot", Content: "x"}, {Content: "y"}}},
			wantFields: []string{"messages[0].role", "messages[1].role"}},
		{name: "sampling out of range", req: &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user"}},
			Temperature: &temp, TopP: &topP, MaxTokens: -1, Stop: []string{"a", "b", "c", "d", "e"}},
			wantFields: []string{"temperature", "top_p", "max_tokens", "stop"}},
		{name: "too large", req: &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: strings.Repeat("x", 5000)}}},
			wantFields: []string{"messages"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(err error) {
				t.Helper()
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument {
					t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
				}
				var fields []string
				for _, d := range st.Details() {
					if br, ok := d.(*errdetails.BadRequest); ok {
						for _, v := range br.GetFieldViolations() {
							fields = append(fields, v.GetField())
							if !strings.Contains(st.Message(), v.GetField()) {
								t.Errorf("message %q does not name field %s", st.Message(), v.GetField())
							}
						}
					}
				}
				if diff := cmp.Diff(fields, tt.wantFields); diff != "" {
					t.Errorf("field violations (-got +want):\n%s", diff)
				}
			}
			_, err := c.Complete(callCtx(t), tt.req)
			check(err)
			st, err := c.StreamComplete(callCtx(t), tt.req)
			if err == nil {
				_, err = st.Recv()
			}
			check(err)
		})
	}
	if got := f.Stats().Total; got != 0 {
		t.Errorf("backend received %d requests for invalid input, want 0", got)
	}
}

func TestCallerDeadline(t *testing.T) {
	slow := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{Latency: 5 * time.Second}}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", slow)}}}}
	c := startDetour(t, cfg, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Complete(ctx, userReq("hi"))
	if got := status.Code(err); got != codes.DeadlineExceeded {
		t.Fatalf("code = %v (%v), want DeadlineExceeded", got, err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	f := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", f)}}}}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	m := &Main{Listen: "127.0.0.1:0", Region: "a", config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ready: func(a net.Addr) { addrc <- a }}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	addr := <-addrc
	defer func() { cancel(); <-done }()
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, svc := range []string{"", "detour.v1.Router"} {
		resp, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

// TestSIGTERMDrainsInflightCalls runs detour as a real process, sends it
// SIGTERM while calls are in flight, and checks every call still succeeds.
func TestSIGTERMDrainsInflightCalls(t *testing.T) {
	slow := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{Latency: 700 * time.Millisecond}}, false)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "detour.yaml")
	doc := fmt.Sprintf("regions:\n  - name: a\n    backends:\n      - name: a-1\n        endpoint: http://%s/v1\n", slow.HTTPAddr())
	if err := os.WriteFile(cfgPath, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	cmd := exec.Command(os.Args[0], "serve", "--config", cfgPath, "--listen", addr, "--region", "a", "--grace", "10s")
	cmd.Env = append(os.Environ(), "DETOUR_TEST_AS_MAIN=1")
	var logs bytes.Buffer
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "detour serving") {
				once.Do(func() { close(serving) })
			}
		}
	}()
	select {
	case <-serving:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-copied
		cmd.Wait()
		t.Fatalf("detour did not start; logs:\n%s", logs.String())
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := detourv1.NewRouterClient(conn)
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := c.Complete(callCtx(t), userReq(fmt.Sprint("in flight ", i)))
			errs <- err
		}()
	}
	// Wait until every call reached the backend, then stop detour.
	eventually(t, 10*time.Second, func() bool { return slow.Stats().InFlight >= n }, "every call reaches the backend")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("in-flight call lost at SIGTERM: %v", err)
		}
	}
	<-copied
	if err := cmd.Wait(); err != nil {
		t.Errorf("detour exited with %v after SIGTERM, want 0; logs:\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "detour stopped") {
		t.Errorf("logs lack the drain: %s", logs.String())
	}
}

func TestServeFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{name: "no command", args: nil},
		{name: "unknown command", args: []string{"serve-all"}},
		{name: "missing config", args: []string{"serve"}},
		{name: "bad grace", args: []string{"serve", "--config", "x.yaml", "--grace", "-1s"}},
		{name: "bad flag", args: []string{"serve", "--nope"}},
		{name: "bad busy rate", args: []string{"demo", "--busy-rate", "2"}},
		{name: "pprof without metrics", args: []string{"serve", "--config", "x.yaml", "--pprof"}},
		{name: "negative gc floor", args: []string{"serve", "--config", "x.yaml", "--gc-heap-floor", "-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), tt.args, &out, &errOut)
			if !errors.Is(err, errUsage) {
				t.Errorf("run(%q) = %v, want a usage error", tt.args, err)
			}
			if errOut.Len() == 0 {
				t.Error("nothing explained on stderr")
			}
		})
	}
	// A config with problems lists every one and does not start.
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	os.WriteFile(p, []byte("regions:\n  - name: a\n    backends:\n      - name: x\n        endpoint: ftp://h\n        weight: -2\n"), 0o600)
	err := run(context.Background(), []string{"serve", "--config", p, "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	var ve *regions.ValidationError
	if !errors.As(err, &ve) || len(ve.Reasons) != 2 {
		t.Errorf("bad config: err = %v, want a ValidationError with 2 reasons", err)
	}
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	testkit.Until(t, timeout, what, cond)
}
