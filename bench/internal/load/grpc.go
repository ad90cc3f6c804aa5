package load

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Dial opens a plaintext gRPC client connection to addr.
func Dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// Request is the standard benchmark request: a short chat prompt, with the
// no_cache hint so that every call goes upstream.
func Request(prompt string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model:    "deepseek-chat",
		Messages: []*detourv1.Message{{Role: "user", Content: prompt}},
		Cache:    &detourv1.CacheHints{NoCache: true},
	}
}

// Unary returns a Call making Complete calls on c with timeout each.
func Unary(c detourv1.RouterClient, req *detourv1.CompleteRequest, timeout time.Duration) Call {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := c.Complete(ctx, req)
		return err
	}
}

// Stream returns a Call making StreamComplete calls and reading every
// chunk; a stream that ends OK without a finish reason is ErrTruncated.
func Stream(c detourv1.RouterClient, req *detourv1.CompleteRequest, timeout time.Duration) Call {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := c.StreamComplete(ctx, req)
		if err != nil {
			return err
		}
		finished := false
		for {
			ch, err := st.Recv()
			if errors.Is(err, io.EOF) {
				if !finished {
					return ErrTruncated
				}
				return nil
			}
			if err != nil {
				return err
			}
			if ch.GetFinishReason() != "" {
				finished = true
			}
		}
	}
}
