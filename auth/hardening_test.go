package auth

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func TestServerHardeningOptions(t *testing.T) {
	if got, want := len(ServerHardening(Hardening{})), 5; got != want {
		t.Errorf("zero Hardening gives %d options, want %d (no MaxRecvMsgSize)", got, want)
	}
	if got, want := len(ServerHardening(Hardening{MaxRecvMsgBytes: 1 << 20})), 6; got != want {
		t.Errorf("with MaxRecvMsgBytes: %d options, want %d", got, want)
	}
}

// TestServerHardeningLimits checks the header and message limits on a real
// server.
func TestServerHardeningLimits(t *testing.T) {
	addr, _ := serve(t, ServerHardening(Hardening{MaxRecvMsgBytes: 64 << 10})...)
	rc := detourv1.NewRouterClient(dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials())))
	tests := []struct {
		name     string
		header   int // bytes of one metadata value
		content  int // bytes of the message
		wantCode codes.Code
	}{
		{name: "small", header: 1 << 10, content: 1 << 10},
		{name: "header list over the default", header: DefaultMaxHeaderListBytes + 1, content: 1, wantCode: codes.Internal},
		{name: "message over the limit", header: 1, content: 65 << 10, wantCode: codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(callCtx(t), "x-filler", strings.Repeat("h", tt.header))
			req := request("m")
			req.Messages[0].Content = strings.Repeat("c", tt.content)
			_, err := rc.Complete(ctx, req)
			if code := status.Code(err); code != tt.wantCode {
				t.Errorf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
		})
	}
}
