package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/regions"
)

// Demo runs a complete local stack in one process: simulated backends in
// three regions (the router's own region answers "server busy" half the
// time), a fallback provider, and the router.
type Demo struct {
	Listen   string
	BusyRate float64
	Logger   *slog.Logger

	// HTTPListen is the address of the OpenAI-compatible HTTP face; empty
	// means off.
	HTTPListen string

	// ready, when set, receives the router's address once serving.
	ready func(addr net.Addr)
}

func parseDemo(args []string, stderr io.Writer) (*Demo, error) {
	d := &Demo{}
	fs := flag.NewFlagSet("detour demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&d.Listen, "listen", "127.0.0.1:50051", "address of the router")
	fs.StringVar(&d.HTTPListen, "http-listen", "127.0.0.1:8080", "address of the OpenAI-compatible HTTP face (empty: off)")
	fs.Float64Var(&d.BusyRate, "busy-rate", 0.5, "share of calls the busy region answers 503 \"server busy\"")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	if fs.NArg() > 0 || d.BusyRate < 0 || d.BusyRate > 1 {
		fmt.Fprintln(stderr, "detour demo: --busy-rate must be in [0, 1] and no arguments are taken")
		return nil, errUsage
	}
	d.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return d, nil
}

// demoBackend is one simulated backend of the demo.
type demoBackend struct {
	region, name, zone string
	kind               string
	latency            time.Duration
	busy               bool
}

var demoBackends = []demoBackend{
	{region: "eu-west", name: "eu-west-a", zone: "eu-west-1a", kind: regions.KindOpenAI, latency: 20 * time.Millisecond, busy: true},
	{region: "eu-west", name: "eu-west-b", zone: "eu-west-1b", kind: regions.KindOpenAI, latency: 20 * time.Millisecond, busy: true},
	{region: "us-east", name: "us-east-a", zone: "us-east-1a", kind: regions.KindOpenAI, latency: 60 * time.Millisecond},
	{region: "us-east", name: "us-east-grpc", zone: "us-east-1b", kind: regions.KindDetour, latency: 60 * time.Millisecond},
	{region: "ap-south", name: "ap-south-a", zone: "ap-south-1a", kind: regions.KindOpenAI, latency: 120 * time.Millisecond},
}

// Run starts the stack, prints how to call it, and stops everything when ctx
// ends.
func (d *Demo) Run(ctx context.Context, stdout io.Writer) error {
	cfg := &regions.Config{}
	byRegion := map[string]int{}
	var fakes []*fakellm.Server
	defer func() {
		for _, f := range fakes {
			f.Close()
		}
	}()
	start := func(b demoBackend) (regions.Backend, error) {
		fc := fakellm.Config{Region: b.region, Name: b.name,
			Settings: fakellm.Settings{Latency: b.latency, Jitter: b.latency / 4, TokensPerSec: 50}}
		if b.busy {
			fc.Settings.BusyRate = d.BusyRate
		}
		f := fakellm.New(fc)
		grpcAddr := ""
		if b.kind == regions.KindDetour {
			grpcAddr = "127.0.0.1:0"
		}
		if err := f.Start("127.0.0.1:0", grpcAddr); err != nil {
			return regions.Backend{}, fmt.Errorf("start simulated backend %s: %w", b.name, err)
		}
		fakes = append(fakes, f)
		bc := regions.Backend{Name: b.name, Kind: b.kind, Zone: b.zone, Models: []string{"deepseek-chat", "deepseek-reasoner"}}
		if b.kind == regions.KindDetour {
			bc.Endpoint = f.GRPCAddr()
		} else {
			bc.Endpoint = "http://" + f.HTTPAddr() + "/v1"
		}
		return bc, nil
	}
	for _, b := range demoBackends {
		bc, err := start(b)
		if err != nil {
			return err
		}
		i, ok := byRegion[b.region]
		if !ok {
			i = len(cfg.Regions)
			byRegion[b.region] = i
			cfg.Regions = append(cfg.Regions, regions.Region{Name: b.region, Priority: i})
		}
		cfg.Regions[i].Backends = append(cfg.Regions[i].Backends, bc)
	}
	fb, err := start(demoBackend{region: "fallback", name: "fallback-provider", kind: regions.KindOpenAI, latency: 150 * time.Millisecond})
	if err != nil {
		return err
	}
	cfg.Fallbacks = []regions.Backend{fb}

	etcd, live, err := startDemoEtcd(ctx, cfg)
	if err != nil {
		return err
	}
	defer etcd.Close()
	m := &Main{Listen: d.Listen, Region: "eu-west", Zone: "eu-west-1a", Grace: 5 * time.Second, Logger: d.Logger, Live: live}
	m.HTTP.Listen = d.HTTPListen
	httpAddr := "off"
	m.httpReady = func(addr net.Addr) { httpAddr = "http://" + addr.String() + "/v1" }
	m.ready = func(addr net.Addr) {
		// demoBackends starts with eu-west's two (busy) backends.
		fmt.Fprint(stdout, banner(addr.String(), d.BusyRate, fakes[0].HTTPAddr(), fakes[1].HTTPAddr(), etcd.Endpoints()[0]))
		fmt.Fprint(stdout, httpBanner(httpAddr))
		if d.ready != nil {
			d.ready(addr)
		}
	}
	return m.Run(ctx)
}

func banner(addr string, busy float64, busyA, busyB, etcd string) string {
	return fmt.Sprintf(`detour demo is running.

  router      %[1]s  (detour.v1.Router, health, reflection; plaintext)
  region      eu-west (this instance): eu-west-a, eu-west-b answer 503 "server busy" %[2]d%% of the time
  regions     us-east (us-east-a over HTTP, us-east-grpc over gRPC), ap-south
  fallback    fallback-provider
  config      etcd %[4]s, key /detour/config (embedded, in a temp dir)

Call it (grpcurl: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest,
or 'go tool -modfile=tools/go.mod grpcurl' from the repository):

  grpcurl -plaintext -d '{"model":"deepseek-chat","messages":[{"role":"user","content":"hello"}]}' %[1]s detour.v1.Router/Complete
  grpcurl -plaintext -d '{"model":"deepseek-chat","messages":[{"role":"user","content":"tell me a story"}]}' %[1]s detour.v1.Router/StreamComplete

Repeat the call: "servedBy" moves to us-east when eu-west is busy, and "attempts" shows the retry.
Make eu-west fully busy while it runs ("busy_rate":0 makes it healthy), on both its backends:

  curl -s -X POST -d '{"busy_rate":1}' http://%[3]s/control   # eu-west-a
  curl -s -X POST -d '{"busy_rate":1}' http://%[5]s/control   # eu-west-b

Drain the eu-west region on every replica, and watch "servedBy" move away from it:

  go run ./cmd/detourctl --endpoints %[4]s drain eu-west-a
  go run ./cmd/detourctl --endpoints %[4]s drain eu-west-b
  go run ./cmd/detourctl status --addr %[1]s
  go run ./cmd/detourctl --endpoints %[4]s undrain eu-west-a

Or edit the whole document: 'config get > demo.yaml', edit it, 'config apply -f demo.yaml'
(same --endpoints); a bad edit is refused with every reason and the old config keeps serving.

Ctrl-C stops everything.
`, addr, int(busy*100), busyA, etcd, busyB)
}
