package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/bench/internal/harness"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	registerHelper("constsrv", "(helper for cachehit) serve detour.v1.Router/Complete answering the CompleteResponse in --response FILE", constSrvMain)
}

// startConstSrv runs this bench binary's constsrv helper as a child, with
// env added to its environment.
func startConstSrv(respFile string, env []string, extra ...string) (*harness.Child, string, error) {
	return harness.StartSelf(append([]string{"constsrv", "--listen", "127.0.0.1:0", "--response", respFile}, extra...),
		"constsrv listening on ", "", env...)
}

// constSrv answers every Complete with the same response.
type constSrv struct {
	detourv1.UnimplementedRouterServer
	resp *detourv1.CompleteResponse
}

func (s *constSrv) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return s.resp, nil
}

func constSrvMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("constsrv", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	respFile := fs.String("response", "", "file holding a binary-encoded detour.v1.CompleteResponse")
	profile := fs.String("cpuprofile", "", "write a CPU profile here until the server stops")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*respFile)
	if err != nil {
		return err
	}
	resp := &detourv1.CompleteResponse{}
	if err := proto.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("%s: %w", *respFile, err)
	}
	return serveBenchServer(ctx, *listen, *profile, "constsrv listening on ", func(srv *grpc.Server) {
		detourv1.RegisterRouterServer(srv, &constSrv{resp: resp})
	})
}
