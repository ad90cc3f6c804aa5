package fakellm_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func helloRequest() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model:    "deepseek-chat",
		Messages: []*detourv1.Message{{Role: "user", Content: "Hello there, how are you?"}},
	}
}

func dialRouter(t testing.TB, addr string) (detourv1.RouterClient, func()) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return detourv1.NewRouterClient(cc), func() { cc.Close() }
}

// recvAll reads a stream to its end.
func recvAll(stream grpc.ServerStreamingClient[detourv1.CompleteChunk]) ([]*detourv1.CompleteChunk, error) {
	var chunks []*detourv1.CompleteChunk
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return chunks, nil
		}
		if err != nil {
			return chunks, err
		}
		chunks = append(chunks, c)
	}
}

func TestGRPCComplete(t *testing.T) {
	f := start(t, fakellm.Config{Name: "fake-1", Region: "eu-west"})
	ctx := context.Background()
	got, err := f.router.Complete(ctx, helloRequest())
	if err != nil {
		t.Fatal(err)
	}
	// The same answer as over HTTP.
	want := &detourv1.CompleteResponse{
		Id:           got.GetId(),
		Model:        "deepseek-chat",
		Content:      "[eu-west] echo: Hello there, how are you? (ref 72d73986)",
		FinishReason: "stop",
		Usage: &detourv1.Usage{PromptTokens: 14, CompletionTokens: 9, TotalTokens: 23,
			PromptCacheHitTokens: proto.Int32(0), PromptCacheMissTokens: proto.Int32(14)},
		ServedBy: &detourv1.ServedBy{Region: "eu-west", Backend: "fake-1", Kind: detourv1.ProviderKind_PROVIDER_KIND_DETOUR},
		Source:   detourv1.Source_SOURCE_LIVE,
		Attempts: 1,
	}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Complete (-got +want):\n%s", diff)
	}

	stream, err := f.router.StreamComplete(ctx, helloRequest())
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := recvAll(stream)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if len(chunks) != 9 {
		t.Fatalf("%d chunks, want one per completion token: 9", len(chunks))
	}
	var content strings.Builder
	for i, c := range chunks {
		content.WriteString(c.GetDelta())
		last := i == len(chunks)-1
		if (c.GetFinishReason() != "") != last || (c.GetUsage() != nil) != last {
			t.Errorf("chunk %d: finish %q usage %v, want them on the last chunk only", i, c.GetFinishReason(), c.GetUsage())
		}
		if c.GetId() != want.Id || c.GetModel() != want.Model || c.GetSource() != want.Source {
			t.Errorf("chunk %d = %v, want id, model and source of the unary answer", i, c)
		}
		if diff := cmp.Diff(c.GetServedBy(), want.ServedBy, protocmp.Transform()); diff != "" {
			t.Errorf("chunk %d served_by (-got +want):\n%s", i, diff)
		}
	}
	if diff := cmp.Diff(content.String(), want.Content); diff != "" {
		t.Errorf("streamed content (-got +want):\n%s", diff)
	}
	last := chunks[len(chunks)-1]
	if diff := cmp.Diff(last.GetUsage(), want.Usage, protocmp.Transform()); diff != "" {
		t.Errorf("streamed usage (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(settled(t, f.srv), fakellm.Stats{Total: 2, OK: 2}); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

func TestGRPCErrors(t *testing.T) {
	bad := helloRequest()
	bad.Messages[0].Role = "robot"
	tests := []struct {
		name       string
		settings   fakellm.Settings
		req        *detourv1.CompleteRequest
		wantCode   codes.Code
		wantChunks int // chunks a stream gets before the error
		want       fakellm.Stats
	}{
		{name: "busy", settings: fakellm.Settings{BusyRate: 1}, req: helloRequest(), wantCode: codes.Unavailable,
			want: fakellm.Stats{Total: 2, Busy: 2}},
		{name: "rate limited", settings: fakellm.Settings{QPS: 0.001, Burst: 1}, req: helloRequest(), wantCode: codes.ResourceExhausted,
			want: fakellm.Stats{Total: 3, OK: 1, RateLimited: 2}},
		{name: "invalid", settings: fakellm.Settings{BusyRate: 1}, req: bad, wantCode: codes.InvalidArgument,
			want: fakellm.Stats{Total: 2, BadRequest: 2}},
		{name: "missing model", req: &detourv1.CompleteRequest{Messages: helloRequest().Messages}, wantCode: codes.InvalidArgument,
			want: fakellm.Stats{Total: 2, BadRequest: 2}},
		{name: "no messages", req: &detourv1.CompleteRequest{Model: "m"}, wantCode: codes.InvalidArgument,
			want: fakellm.Stats{Total: 2, BadRequest: 2}},
		{name: "garbage", settings: fakellm.Settings{GarbageRate: 1}, req: helloRequest(), wantCode: codes.Internal, wantChunks: 4,
			want: fakellm.Stats{Total: 2, Garbage: 2}},
		{name: "cut", settings: fakellm.Settings{CutRate: 1}, req: helloRequest(), wantCode: codes.Unavailable, wantChunks: 4,
			want: fakellm.Stats{Total: 2, Cut: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, fakellm.Config{Settings: tt.settings})
			ctx := context.Background()
			if tt.settings.QPS > 0 { // spend the burst
				if _, err := f.router.Complete(ctx, helloRequest()); err != nil {
					t.Fatal(err)
				}
			}
			_, err := f.router.Complete(ctx, tt.req)
			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("Complete: %v, want code %v", err, tt.wantCode)
			}
			st := status.Convert(err)
			switch tt.wantCode {
			case codes.ResourceExhausted:
				if !hasDetail[*errdetails.RetryInfo](st) {
					t.Errorf("Complete: %v, want a RetryInfo detail", err)
				}
			case codes.InvalidArgument:
				if !hasDetail[*errdetails.BadRequest](st) {
					t.Errorf("Complete: %v, want a BadRequest detail", err)
				}
			case codes.Unavailable:
				if tt.name == "busy" && st.Message() != "server busy, please retry later" {
					t.Errorf("Complete: %v, want the busy message", err)
				}
			}

			stream, err := f.router.StreamComplete(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			chunks, err := recvAll(stream)
			if got := status.Code(err); got != tt.wantCode || len(chunks) != tt.wantChunks {
				t.Errorf("StreamComplete: %d chunks then %v, want %d then code %v", len(chunks), err, tt.wantChunks, tt.wantCode)
			}
			if diff := cmp.Diff(settled(t, f.srv), tt.want); diff != "" {
				t.Errorf("Stats (-got +want):\n%s", diff)
			}
		})
	}
}

func hasDetail[T any](st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(T); ok {
			return true
		}
	}
	return false
}

func TestGRPCReleasedByClient(t *testing.T) {
	tests := []struct {
		name     string
		settings fakellm.Settings
		stream   bool
		want     fakellm.Stats
	}{
		{"hang", fakellm.Settings{HangRate: 1}, false, fakellm.Stats{Total: 1, Hang: 1}},
		{"latency", fakellm.Settings{Latency: time.Hour}, false, fakellm.Stats{Total: 1, Canceled: 1}},
		{"stream hang", fakellm.Settings{HangRate: 1}, true, fakellm.Stats{Total: 1, Hang: 1}},
		{"stream pacing", fakellm.Settings{TokensPerSec: 0.001}, true, fakellm.Stats{Total: 1, Canceled: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, fakellm.Config{Settings: tt.settings})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				if !tt.stream {
					_, err := f.router.Complete(ctx, helloRequest())
					done <- err
					return
				}
				stream, err := f.router.StreamComplete(ctx, helloRequest())
				if err == nil {
					_, err = recvAll(stream)
				}
				done <- err
			}()
			waitFor(t, "the request to arrive", func() bool { return f.srv.Stats().Total == 1 })
			cancel()
			if err := <-done; status.Code(err) != codes.Canceled {
				t.Errorf("got %v, want CANCELED", err)
			}
			if diff := cmp.Diff(settled(t, f.srv), tt.want); diff != "" {
				t.Errorf("Stats (-got +want):\n%s", diff)
			}
		})
	}
}
