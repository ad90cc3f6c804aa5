package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/internal/hop"
	"github.com/detour-dev/detour/internal/hostile"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// The tests of this file reproduce the faults of issue 13 end to end: a
// real Server and Router on loopback, over upstreams from internal/hostile
// served with httptest.

// hostileFixture is a Server routing over real provider clients.
type hostileFixture struct {
	rt     *router.Router
	srv    *Server
	addr   string
	client detourv1.RouterClient
	logs   *testkit.Buffer // the call log
}

// upstream serves h on loopback until the test ends and returns its base
// URL for an openai backend.
func upstream(t *testing.T, h http.Handler) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL + "/v1"
}

func startHostile(t *testing.T, cfg *regions.Config, region string) *hostileFixture {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startHostileOn(t, lis, cfg, region)
}

// startHostileOn is startHostile on lis, whose address cfg may name.
func startHostileOn(t *testing.T, lis net.Listener, cfg *regions.Config, region string) *hostileFixture {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{Region: region, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	fx := &hostileFixture{rt: rt, logs: &testkit.Buffer{}}
	fx.srv = New(rt, Options{Logger: quiet, LogCalls: true, CallLog: fx.logs})
	fx.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() { defer close(served); fx.srv.Serve(lis) }()
	conn, err := grpc.NewClient(fx.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	fx.client = detourv1.NewRouterClient(conn)
	t.Cleanup(func() {
		conn.Close()
		fx.srv.Shutdown(context.Background())
		<-served
		rt.Close()
	})
	return fx
}

// twoRegions is a config whose own region "a" holds the backend at aURL
// and a second region "b" the one at bURL.
func twoRegions(aURL, bURL string) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{
			{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: aURL}}},
			{Name: "b", Priority: 1, Backends: []regions.Backend{{Name: "b-1", Endpoint: bURL}}},
		},
		Retry: regions.RetryPolicy{MaxAttempts: 2},
	}
}

const goodAnswer = `{"id":"ok","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}]}`

func deterministic(content string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "m", Messages: []*detourv1.Message{{Role: "user", Content: content}}, Temperature: proto.Float64(0)}
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestEmptyAnswerIsTriedElsewhereNotCached: a 200 with {"choices":[{}]}
// is a failed attempt: the call is served by the other region, and what is
// cached is that answer, never the empty one.
func TestEmptyAnswerIsTriedElsewhereNotCached(t *testing.T) {
	fx := startHostile(t, twoRegions(upstream(t, hostile.Answer(`{"choices":[{}]}`)), upstream(t, hostile.Answer(goodAnswer))), "a")
	ctx := callCtx(t)
	for i, wantSource := range []detourv1.Source{detourv1.Source_SOURCE_LIVE, detourv1.Source_SOURCE_CACHE} {
		resp, err := fx.client.Complete(ctx, deterministic("hi"))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if resp.GetContent() != "fine" || resp.GetServedBy().GetBackend() != "b-1" || resp.GetSource() != wantSource {
			t.Errorf("call %d: %q from %q, %v; want \"fine\" from b-1, %v", i, resp.GetContent(), resp.GetServedBy().GetBackend(), resp.GetSource(), wantSource)
		}
	}
}

// TestStreamWithoutFinishReasonIsNotCached: an SSE stream that ends in
// [DONE] without a finish reason is a broken stream (UNAVAILABLE after
// its chunks), and the next identical call goes upstream again rather than
// replaying it from the cache.
func TestStreamWithoutFinishReasonIsNotCached(t *testing.T) {
	unfinished := hostile.Stream(hostile.Delta("Hel", ""), hostile.Delta("lo", ""), "[DONE]")
	var n hostile.Counter
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: upstream(t, n.Count(unfinished))}}}}}
	fx := startHostile(t, cfg, "a")
	ctx := callCtx(t)
	for i := range 2 {
		st, err := fx.client.StreamComplete(ctx, deterministic("hi"))
		if err != nil {
			t.Fatal(err)
		}
		var text string
		var sources []detourv1.Source
		for {
			c, err := st.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) || status.Code(err) != codes.Unavailable {
					t.Errorf("call %d: stream ended with %v after %q, want UNAVAILABLE", i, err, text)
				}
				break
			}
			text += c.GetDelta()
			sources = append(sources, c.GetSource())
		}
		for _, s := range sources {
			if s != detourv1.Source_SOURCE_LIVE {
				t.Errorf("call %d: a chunk came from %v, want every chunk live", i, s)
			}
		}
	}
	if got := n.Started(); got != 2 {
		t.Errorf("%d upstream streams, want 2 (nothing cached)", got)
	}
}

// maxLine bounds one call log line: the fixed fields and a few clipped
// excerpts.
const maxLine = 2 << 10

// TestUnknownModelMessageIsBounded: a 1 MB model name is neither echoed
// whole in the NOT_FOUND message nor in the call log line.
func TestUnknownModelMessageIsBounded(t *testing.T) {
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{
		{Name: "a-1", Endpoint: upstream(t, hostile.Answer(goodAnswer)), Models: []string{"m"}}}}}}
	fx := startHostile(t, cfg, "a")
	req := deterministic("hi")
	req.Model = strings.Repeat("é", 512<<10)
	_, err := fx.client.Complete(callCtx(t), req)
	st := status.Convert(err)
	if st.Code() != codes.NotFound {
		t.Fatalf("code %v (%.200s), want NotFound", st.Code(), st.Message())
	}
	if len(st.Message()) > maxEcho || !utf8.ValidString(st.Message()) || !strings.Contains(st.Message(), "clipped") {
		t.Errorf("NOT_FOUND message: %d bytes, valid UTF-8 %v: %.300q; want <= %d bytes, valid, marked clipped",
			len(st.Message()), utf8.ValidString(st.Message()), st.Message(), maxEcho)
	}
	fx.srv.Shutdown(context.Background()) // flushes nothing: the log is written at once
	for _, line := range fx.logs.Lines() {
		if len(line) > maxLine {
			t.Errorf("call log line of %d bytes, want <= %d: %.300s", len(line), maxLine, line)
		}
	}
}

// maxEcho bounds a status message that quotes outside text.
const maxEcho = 512

// TestUpstreamErrorIsScrubbedForCallerAndLog: an upstream 400 whose body
// quotes the prompt at length and a key reaches the caller (INVALID_ARGUMENT)
// and the call log only as a clipped excerpt without the key.
func TestUpstreamErrorIsScrubbedForCallerAndLog(t *testing.T) {
	body := `{"error":{"message":"Incorrect API key provided: sk-proj-********wxyz; prompt: ` + strings.Repeat("my secret prompt ", 2000) + `"}}`
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{
		{Name: "a-1", Endpoint: upstream(t, hostile.Status(http.StatusBadRequest, body))}}}}}
	fx := startHostile(t, cfg, "a")
	_, err := fx.client.Complete(callCtx(t), deterministic("hi"))
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code %v (%.200s), want InvalidArgument", st.Code(), st.Message())
	}
	for what, text := range map[string]string{"message": st.Message(), "log": fx.logs.String()} {
		if strings.Contains(text, "sk-proj") || strings.Contains(text, "wxyz") {
			t.Errorf("%s holds the key: %.300q", what, text)
		}
		if n := strings.Count(text, "my secret prompt"); n > 20 {
			t.Errorf("%s quotes the prompt %d times: %.300q", what, n, text)
		}
	}
	if len(st.Message()) > maxEcho {
		t.Errorf("message of %d bytes, want <= %d", len(st.Message()), maxEcho)
	}
}

// TestRoutingLoopEndsAtMaxHops: a kind: detour backend that is the
// instance itself. Each nested call carries one more hop; the one over
// limits.max_hops (4) is refused, the detour that sent it counts that
// against the backend and serves the call from the other region, and the
// answer goes back up the chain: six calls in all, instead of recursing
// until the attempt times out. A cacheable call must not wait for itself
// either (a nested call joining the shared call it serves would wait until
// the attempt timed out): it is answered through the loop, in one attempt.
func TestRoutingLoopEndsAtMaxHops(t *testing.T) {
	for _, tt := range []struct {
		name        string
		temperature float64
	}{{"uncacheable", 0.7}, {"cacheable", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg := &regions.Config{
				Regions: []regions.Region{
					{Name: "a", Backends: []regions.Backend{{Name: "self", Kind: regions.KindDetour, Endpoint: lis.Addr().String()}}},
					{Name: "b", Priority: 1, Backends: []regions.Backend{{Name: "b-1", Endpoint: upstream(t, hostile.Answer(goodAnswer))}}},
				},
				Retry: regions.RetryPolicy{MaxAttempts: 2, AttemptTimeout: regions.Duration(300 * time.Millisecond)},
			}
			fx := startHostileOn(t, lis, cfg, "a")
			req := deterministic("loop")
			req.Temperature = proto.Float64(tt.temperature)
			resp, err := fx.client.Complete(callCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetContent() != "fine" || resp.GetAttempts() != 1 {
				t.Errorf("answer %q in %d attempts, want \"fine\" through the loop in 1", resp.GetContent(), resp.GetAttempts())
			}
			var refused, served int
			for _, line := range fx.logs.Lines() {
				switch {
				case strings.Contains(line, `"code":"FailedPrecondition"`) && strings.Contains(line, "routing loop"):
					refused++
				case strings.Contains(line, `"code":"OK"`):
					served++
				default:
					t.Errorf("unexpected call line: %.300s", line)
				}
			}
			if refused != 1 || served != hop.DefaultMax+1 {
				t.Errorf("%d calls served and %d refused, want %d and 1", served, refused, hop.DefaultMax+1)
			}
		})
	}
}

// TestHopHeader: the hop count a caller sends is checked before routing.
func TestHopHeader(t *testing.T) {
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: upstream(t, hostile.Answer(goodAnswer))}}}},
		Limits: regions.LimitPolicy{MaxHops: 2}}
	fx := startHostile(t, cfg, "a")
	for _, tt := range []struct {
		hops string
		want codes.Code
	}{{"", codes.OK}, {"2", codes.OK}, {"3", codes.FailedPrecondition}, {"-1", codes.InvalidArgument}, {"x", codes.InvalidArgument}} {
		ctx := callCtx(t)
		if tt.hops != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, hop.Key, tt.hops)
		}
		_, err := fx.client.Complete(ctx, deterministic("hi"))
		st := status.Convert(err)
		if st.Code() != tt.want {
			t.Errorf("%s %q: %v (%s), want %v", hop.Key, tt.hops, st.Code(), st.Message(), tt.want)
		}
		if tt.want == codes.FailedPrecondition && !hop.Refused(st) {
			t.Errorf("%s %q: status %v lacks the hop ErrorInfo", hop.Key, tt.hops, st.Proto())
		}
	}
}

// rawCodec sends requests as the wire bytes given, so that a test can
// send what grpc-go's proto codec refuses to encode (invalid UTF-8).
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (rawCodec) Name() string { return "proto" }

// rawRequest encodes a CompleteRequest by hand: model, then one message
// with role and content, whatever their bytes.
func rawRequest(model, role, content string) []byte {
	var msg []byte
	msg = protowire.AppendTag(msg, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, role)
	msg = protowire.AppendTag(msg, 2, protowire.BytesType)
	msg = protowire.AppendString(msg, content)
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, model)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, msg)
	return b
}

// TestInvalidUTF8IsInvalidArgument: a request whose string fields hold
// invalid UTF-8 is the caller's error, INVALID_ARGUMENT naming each field,
// logged and counted as other rejections are; grpc-go's codec made it
// INTERNAL, before detour saw the call.
func TestInvalidUTF8IsInvalidArgument(t *testing.T) {
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: upstream(t, hostile.Answer(goodAnswer))}}}}}
	fx := startHostile(t, cfg, "a")
	conn, err := grpc.NewClient(fx.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bad := rawRequest("m\xff", "user", "caf\xe9 au lait")
	check := func(method string, err error) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Fatalf("%s: %v (%s), want InvalidArgument", method, st.Code(), st.Message())
		}
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if diff := cmp.Diff(fields, []string{"model", "messages[0].content"}); diff != "" {
			t.Errorf("%s: field violations (-got +want):\n%s", method, diff)
		}
	}
	var resp detourv1.CompleteResponse
	check("Complete", conn.Invoke(callCtx(t), "/detour.v1.Router/Complete", bad, &resp, grpc.ForceCodecV2(rawCodec{})))
	st, err := conn.NewStream(callCtx(t), &detourv1.Router_ServiceDesc.Streams[0], "/detour.v1.Router/StreamComplete", grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SendMsg(bad); err != nil {
		t.Fatal(err)
	}
	st.CloseSend()
	var chunk detourv1.CompleteChunk
	check("StreamComplete", st.RecvMsg(&chunk))
	// Logged like any other rejection; a valid raw request still works.
	if n := strings.Count(fx.logs.String(), `"code":"InvalidArgument"`); n != 2 {
		t.Errorf("%d call lines with InvalidArgument, want 2:\n%s", n, fx.logs.String())
	}
	if err := conn.Invoke(callCtx(t), "/detour.v1.Router/Complete", rawRequest("m", "user", "café"), &resp, grpc.ForceCodecV2(rawCodec{})); err != nil {
		t.Errorf("valid raw request: %v", err)
	}
}

// TestGraceCutIsLoggedAsShutdown: calls still running when Shutdown's
// grace ends are cut by the server, not canceled by their callers, and
// their log lines say so.
func TestGraceCutIsLoggedAsShutdown(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	g := newGate()
	rt, err := router.New(&regions.Snapshot{Config: admitConfig(regions.LimitPolicy{})}, router.Options{
		NewProvider: func(regions.Backend) (router.Provider, error) { return g, nil }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	var logs testkit.Buffer
	s := New(rt, Options{Logger: quiet, LogCalls: true, CallLog: &logs})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := detourv1.NewRouterClient(conn)
	done := make(chan error, 2)
	go func() { _, err := client.Complete(callCtx(t), admitReq); done <- err }()
	go func() {
		st, err := client.StreamComplete(callCtx(t), admitReq)
		if err == nil {
			_, err = st.Recv()
		}
		done <- err
	}()
	<-g.entered
	<-g.entered
	grace, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	s.Shutdown(grace) // the gate never opens: both calls outlive the grace
	<-served
	for range 2 {
		if err := <-done; err == nil {
			t.Error("a call outlived the shutdown")
		}
	}
	testkit.Until(t, 5*time.Second, "two call lines", func() bool { return strings.Count(logs.String(), `"msg":"call"`) == 2 })
	for _, line := range logs.Lines() {
		if strings.Contains(line, "canceled by the caller") || !strings.Contains(line, "cut by shutdown") {
			t.Errorf("call line %s, want one saying the call was cut by shutdown", line)
		}
	}
}
