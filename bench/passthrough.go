package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	registerHelper("passthrough", "(helper for hop) serve a bare grpc-go pass-through proxy of detour.v1.Router: --listen ADDR --upstream ADDR", passthroughMain)
}

// passthrough forwards detour.v1.Router calls to one upstream over one
// client connection: no validation, breaker, balancing or retry. It decodes
// and re-encodes each message as detour must, so it is the floor of one extra
// gRPC hop that does the same work on the wire.
type passthrough struct {
	detourv1.UnimplementedRouterServer
	up detourv1.RouterClient
}

func (p *passthrough) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return p.up.Complete(ctx, req)
}

func (p *passthrough) StreamComplete(req *detourv1.CompleteRequest, down grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
	up, err := p.up.StreamComplete(down.Context(), req)
	if err != nil {
		return err
	}
	for {
		ch, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := down.Send(ch); err != nil {
			return err
		}
	}
}

func passthroughMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("passthrough", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := fs.String("upstream", "", "host:port of the upstream detour.v1.Router")
	profile := fs.String("cpuprofile", "", "write a CPU profile here until the proxy stops")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *upstream == "" {
		return errors.New("--upstream is required")
	}
	conn, err := load.Dial(*upstream)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.Connect()
	return serveBenchServer(ctx, *listen, *profile, "passthrough listening on ", func(srv *grpc.Server) {
		detourv1.RegisterRouterServer(srv, &passthrough{up: detourv1.NewRouterClient(conn)})
	})
}

// startPassthrough runs this bench binary's passthrough helper as a child
// process in front of upstream, with env added to its environment.
func startPassthrough(upstream string, env []string, extra ...string) (*harness.Child, string, error) {
	return harness.StartSelf(append([]string{"passthrough", "--listen", "127.0.0.1:0", "--upstream", upstream}, extra...),
		"passthrough listening on ", "", env...)
}
