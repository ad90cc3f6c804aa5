package fakellm_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixture is a started Server with real loopback clients.
type fixture struct {
	srv    *fakellm.Server
	http   *http.Client
	base   string // http://host:port
	router detourv1.RouterClient
}

// start starts a Server for cfg on loopback HTTP and gRPC ports, closed at
// the end of the test.
func start(t *testing.T, cfg fakellm.Config) *fixture {
	t.Helper()
	srv := fakellm.New(cfg)
	if err := srv.Start("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	cc, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return &fixture{
		srv:    srv,
		http:   &http.Client{Transport: tr},
		base:   "http://" + srv.HTTPAddr(),
		router: detourv1.NewRouterClient(cc),
	}
}

// reply is an HTTP answer read whole.
type reply struct {
	code   int
	header http.Header
	body   []byte
	err    error // from reading the body
}

func (f *fixture) do(t *testing.T, ctx context.Context, method, path, body string) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, f.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{code: resp.StatusCode, header: resp.Header, body: b, err: err}
}

func (f *fixture) chat(t *testing.T, body string) reply {
	t.Helper()
	return f.do(t, context.Background(), http.MethodPost, "/v1/chat/completions", body)
}

// waitFor waits until cond holds, or fails the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Until(t, 5*time.Second, what, cond)
}

// settled waits until srv has no request in flight, and returns its Stats:
// a client may see its answer before the handler has returned.
func settled(t *testing.T, srv *fakellm.Server) fakellm.Stats {
	t.Helper()
	waitFor(t, "the handlers to end", func() bool { return srv.Stats().InFlight == 0 })
	return srv.Stats()
}

// OpenAI JSON shapes, as a client decodes them.
type (
	usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	}
	message struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	completion struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		Model   string `json:"model"`
		Choices []struct {
			Index        int     `json:"index"`
			Message      message `json:"message"`
			FinishReason string  `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	streamChunk struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		Model   string `json:"model"`
		Choices []struct {
			Index        int     `json:"index"`
			Delta        message `json:"delta"`
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
		Usage *usage `json:"usage"`
	}
	apiError struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    string  `json:"code"`
		} `json:"error"`
	}
)

// sseEvents splits an SSE body into its data payloads, and reports whether
// every event was well formed.
func sseEvents(t *testing.T, body []byte) []string {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("SSE line %q is not a data line", line)
		}
		events = append(events, data)
	}
	return events
}

func TestStartAddresses(t *testing.T) {
	tests := []struct {
		name      string
		httpAddr  string
		grpcAddr  string
		wantHTTP  bool
		wantGRPC  bool
		wantError bool
	}{
		{name: "both", httpAddr: "127.0.0.1:0", grpcAddr: "127.0.0.1:0", wantHTTP: true, wantGRPC: true},
		{name: "http only, no host", httpAddr: ":0", wantHTTP: true},
		{name: "grpc only", grpcAddr: ":0", wantGRPC: true},
		{name: "none", wantError: true},
		{name: "bad address", httpAddr: "127.0.0.1:99999", wantError: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakellm.New(fakellm.Config{})
			defer srv.Close()
			err := srv.Start(tt.httpAddr, tt.grpcAddr)
			if gotErr := err != nil; gotErr != tt.wantError {
				t.Fatalf("Start(%q, %q) = %v, want error: %v", tt.httpAddr, tt.grpcAddr, err, tt.wantError)
			}
			for _, c := range []struct {
				proto, addr string
				want        bool
			}{{"http", srv.HTTPAddr(), tt.wantHTTP}, {"grpc", srv.GRPCAddr(), tt.wantGRPC}} {
				if !c.want {
					if c.addr != "" {
						t.Errorf("%s address = %q, want none", c.proto, c.addr)
					}
					continue
				}
				host, port, err := net.SplitHostPort(c.addr)
				if err != nil || host != "127.0.0.1" || port == "0" {
					t.Errorf("%s address = %q, want 127.0.0.1 and a bound port", c.proto, c.addr)
				}
			}
		})
	}
}

func TestStartTwiceAndAfterClose(t *testing.T) {
	srv := fakellm.New(fakellm.Config{})
	if err := srv.Start("127.0.0.1:0", ""); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0", ""); err == nil {
		t.Error("second Start succeeded, want an error")
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := srv.Start("127.0.0.1:0", ""); err != fakellm.ErrClosed {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestNewPanicsOnInvalidConfig(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New accepted BusyRate 2")
		}
	}()
	fakellm.New(fakellm.Config{Settings: fakellm.Settings{BusyRate: 2}})
}

func TestModels(t *testing.T) {
	tests := []struct {
		name string
		cfg  fakellm.Config
		want string
	}{
		{
			name: "default",
			cfg:  fakellm.Config{},
			want: `{"object":"list","data":[{"id":"deepseek-chat","object":"model","owned_by":"fakellm"},{"id":"deepseek-reasoner","object":"model","owned_by":"fakellm"}]}`,
		},
		{
			name: "configured",
			cfg:  fakellm.Config{Name: "eu-1", Models: []string{"m1"}},
			want: `{"object":"list","data":[{"id":"m1","object":"model","owned_by":"eu-1"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, tt.cfg)
			r := f.do(t, context.Background(), http.MethodGet, "/v1/models", "")
			if r.code != http.StatusOK {
				t.Fatalf("status %d, want 200", r.code)
			}
			if diff := cmp.Diff(string(r.body), tt.want); diff != "" {
				t.Errorf("body (-got +want):\n%s", diff)
			}
		})
	}
}
