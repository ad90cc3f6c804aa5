//go:build !nodemo

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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

// demoUsage is the demo and dev lines of detour's usage.
const demoUsage = `  demo    start a local stack: three simulated regions (one busy), a fallback,
          and the router on 127.0.0.1:50051
  dev     dev etcd: an etcd for local use on 127.0.0.1:2379, for
          'serve --etcd-endpoints' and detourctl
`

// runDemo is `detour demo`.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d, err := parseDemo(args, stderr)
	if err != nil {
		return err
	}
	return d.Run(ctx, stdout)
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
	demoSpend(cfg)

	etcd, live, err := startDemoEtcd(ctx, cfg)
	if err != nil {
		return err
	}
	defer etcd.Close()
	jobsDir, err := os.MkdirTemp("", "detour-demo-jobs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(jobsDir)
	m := &Main{Listen: d.Listen, Region: "eu-west", Zone: "eu-west-1a", Grace: 5 * time.Second, Logger: d.Logger, Live: live,
		Jobs: demoJobs("sqlite:" + filepath.Join(jobsDir, "jobs.db"))}
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

// demoSpend gives the demo two tenants (named by x-detour-tenant: the demo
// has no authentication) with token limits, and example prices per
// million tokens, so that detourctl usage has something to show.
func demoSpend(cfg *regions.Config) {
	cfg.Tenants = []regions.Tenant{{Principal: regions.Principal{Name: "search"}}, {Principal: regions.Principal{Name: "billing"}}}
	cfg.Spend = regions.SpendPolicy{
		Currency: "USD",
		Prices: []regions.Price{
			{Model: "deepseek-chat", Input: 0.27, CacheHitInput: 0.07, Output: 1.10},
			{Model: "deepseek-reasoner", Input: 0.55, CacheHitInput: 0.14, Output: 2.19},
			{Backend: "fallback-provider", Model: "deepseek-chat", Input: 2.50, Output: 10}, // a dearer fallback
		},
		Tenants: []regions.TenantSpend{
			{Name: "search", SpendLimits: regions.SpendLimits{TPM: 60000, Budget: &regions.Budget{Period: regions.PeriodMonth, Amount: 50}}},
			{Name: "billing", SpendLimits: regions.SpendLimits{TPM: 6000, Budget: &regions.Budget{Period: regions.PeriodDay, Tokens: 20000}}},
		},
		Others: regions.SpendLimits{TPM: 30000},
	}
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

Tokens, spend and savings per tenant (send "x-detour-tenant: search" or "billing" with grpcurl -H;
search has 60000 tokens a minute and 50 USD a month, billing 6000 a minute and 20000 a day):

  go run ./cmd/detourctl usage --addr %[1]s

Or edit the whole document: 'config get > demo.yaml', edit it, 'config apply -f demo.yaml'
(same --endpoints); a bad edit is refused with every reason and the old config keeps serving.

Asynchronous jobs (detour.v1.Jobs, kept in SQLite in a temp dir): submit a call, then watch it
until its answer (use the "id" Submit returned; the first job of the demo is "1"):

  grpcurl -plaintext -d '{"request":{"model":"deepseek-chat","messages":[{"role":"user","content":"summarise the report"}]},"idempotency_key":"report-1"}' %[1]s detour.v1.Jobs/Submit
  grpcurl -plaintext -d '{"id":"1"}' %[1]s detour.v1.Jobs/Watch
  go run ./cmd/detourctl jobs list --addr %[1]s

Ctrl-C stops everything.
`, addr, int(busy*100), busyA, etcd, busyB)
}
