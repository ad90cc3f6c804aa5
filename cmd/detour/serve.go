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
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/internal/gcfloor"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/server"
)

// Main is one detour process: config, router and gRPC server. Tests run it in
// process on port 0.
type Main struct {
	ConfigPath string
	Listen     string
	Region     string
	Zone       string
	// HealthListen is the address of a plaintext listener that serves only
	// grpc.health.v1, with the Router listener's statuses, for probes that
	// cannot speak TLS (the kubelet's). Empty means none.
	HealthListen string
	// Grace bounds the drain of in-flight calls at shutdown.
	Grace time.Duration
	// GCHeapFloorMiB keeps the garbage collector's heap goal at least this
	// many MiB (internal/gcfloor); 0 leaves GOGC alone. The GOGC
	// environment variable, when set, wins.
	GCHeapFloorMiB int
	// UpstreamBodyBudgetMiB bounds the upstream body bytes the process
	// holds at once (provider.SetBodyBudget); 0 means its default, 32.
	UpstreamBodyBudgetMiB int
	Logger                *slog.Logger
	// CallLog receives the per-call JSON lines; nil means through Logger.
	// serve gives it a buffered side of Logger's output (logsink.go).
	CallLog io.Writer
	// Live holds the etcd and Admin settings (etcd.go).
	Live LiveOptions
	// Observe holds the metrics, tracing and call-log settings (observe.go).
	Observe ObserveOptions
	// Security holds the TLS and authentication settings (security.go).
	Security SecurityOptions
	// Redis holds the shared-state settings (redis.go).
	Redis RedisOptions
	// Jobs holds the asynchronous jobs' settings (jobs.go).
	Jobs JobsOptions
	// HTTP holds the OpenAI-compatible HTTP face's settings (httpface.go).
	HTTP HTTPOptions

	fleet  *fleet.Store   // opened from Redis by Run
	health *fleet.Monitor // checks fleet; nil without Redis
	logOut io.Writer      // where Run writes JSON logs when Logger is nil

	// config, when set, is used instead of reading ConfigPath (demo, tests).
	config *regions.Config
	// ready, when set, receives the bound address once serving.
	ready func(addr net.Addr)
	// metricsReady, when set, receives the bound /metrics address.
	metricsReady func(addr net.Addr)
	// healthReady, when set, receives the bound --health-listen address.
	healthReady func(addr net.Addr)
	// httpReady, when set, receives the bound --http-listen address.
	httpReady func(addr net.Addr)
}

func parseServe(args []string, stderr io.Writer) (*Main, error) {
	m := &Main{}
	fs := flag.NewFlagSet("detour serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&m.ConfigPath, "config", "", "path of the YAML config document (this or --etcd-endpoints is required)")
	fs.StringVar(&m.Listen, "listen", "127.0.0.1:50051", "address of the detour.v1.Router gRPC listener")
	fs.StringVar(&m.Region, "region", os.Getenv("DETOUR_REGION"), "region of this instance (env DETOUR_REGION); its backends are tried first")
	fs.StringVar(&m.Zone, "zone", os.Getenv("DETOUR_ZONE"), "zone of this instance (env DETOUR_ZONE); its backends are preferred")
	fs.StringVar(&m.HealthListen, "health-listen", "", "address of a plaintext listener serving only grpc.health.v1 (and reflection, for grpcurl), for the kubelet's gRPC probes when TLS is on (empty: off)")
	fs.DurationVar(&m.Grace, "grace", 30*time.Second, "how long in-flight calls may run after SIGTERM")
	fs.IntVar(&m.GCHeapFloorMiB, "gc-heap-floor", 16, "MiB below which the garbage collector's heap goal never falls (fewer GC cycles for a small live heap; 0: plain GOGC; an explicit GOGC env wins)")
	fs.IntVar(&m.UpstreamBodyBudgetMiB, "upstream-body-budget", provider.DefaultBodyBudget>>20, "MiB of upstream bodies (answers being read, stream events) the process holds at once, across every backend; a body that would pass it fails its attempt, which is tried elsewhere")
	m.Live.register(fs)
	m.Observe.register(fs)
	m.Security.register(fs)
	m.Redis.register(fs)
	m.Jobs.register(fs)
	m.HTTP.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	problems := m.Live.check(m.ConfigPath)
	problems = append(problems, m.Observe.problems()...)
	problems = append(problems, m.Security.problems()...)
	problems = append(problems, m.Redis.problems()...)
	problems = append(problems, m.Jobs.problems()...)
	problems = append(problems, m.HTTP.problems()...)
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	if m.Grace < 0 {
		problems = append(problems, "--grace must be >= 0")
	}
	if maxMiB := gcfloor.MaxFloor >> 20; m.GCHeapFloorMiB < 0 || m.GCHeapFloorMiB > maxMiB {
		problems = append(problems, fmt.Sprintf("--gc-heap-floor must be between 0 and %d (MiB)", maxMiB))
	}
	if m.UpstreamBodyBudgetMiB < 1 || m.UpstreamBodyBudgetMiB > 1<<20 {
		problems = append(problems, "--upstream-body-budget must be between 1 and 1048576 (MiB)")
	}
	if m.HealthListen != "" {
		if _, _, err := net.SplitHostPort(m.HealthListen); err != nil {
			problems = append(problems, fmt.Sprintf("--health-listen %q: %v", m.HealthListen, err))
		}
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "detour serve:", p)
		}
		return nil, errUsage
	}
	m.logOut = stderr
	return m, nil
}

// Run serves until ctx ends, then drains in-flight calls for at most Grace.
func (m *Main) Run(ctx context.Context) error {
	if m.Logger == nil && m.logOut != nil {
		// JSON lines; the per-call ones are buffered (logsink.go).
		sink := newLogSink(m.logOut)
		defer sink.Close()
		m.Logger = slog.New(slog.NewJSONHandler(sink, nil))
		m.CallLog = sink.Buffered()
	}
	log := m.Logger
	if log == nil {
		log = slog.Default()
	}
	if m.GCHeapFloorMiB > 0 {
		defer gcfloor.Start(uint64(m.GCHeapFloorMiB)<<20, 100)()
	}
	if n, err := applyMemoryLimit(os.Getenv); err != nil {
		return err
	} else if n > 0 {
		log.Info("memory limit set from the container's", "gomemlimit_bytes", n, "env", memoryLimitEnv)
	}
	provider.SetBodyBudget(int64(m.UpstreamBodyBudgetMiB) << 20)
	ob, err := startObservability(ctx, m.Observe, log)
	if err != nil {
		return err
	}
	defer ob.Close()
	if a := ob.MetricsAddr(); a != nil && m.metricsReady != nil {
		m.metricsReady(a)
	}
	m.Live.Metrics = ob.metrics
	if m.fleet, err = fleet.Open(m.Redis.config()); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if m.fleet != nil {
		defer m.fleet.Close()
		fleet.RouteRedisLogs(log)
		// Logs "shared state in redis" once Redis answered, or warns that
		// it does not; then each time that changes.
		m.health = fleet.NewMonitor(m.fleet, fleet.WithLogger(log))
		defer m.health.Close()
		ob.metrics.Redis(func() bool { return m.health.Health().Up }, func() uint64 { return m.health.Health().Errors })
	}
	live, err := m.openConfig(ctx, log)
	if err != nil || live == nil {
		return err
	}
	defer live.Close()
	rt := live.rt
	source := rt.Snapshot().Source
	sec, err := startSecurity(m.Security, func() *regions.Config { return rt.Snapshot().Config }, log)
	if err != nil {
		return err
	}
	defer sec.Close()
	gopts := append(sec.serverOptions(), ob.grpcOpts...)
	srv := server.New(rt, server.Options{
		Logger:          log,
		CallLog:         m.CallLog,
		Metrics:         ob.metrics,
		LogCalls:        m.Observe.LogCalls,
		ReturnRequestID: m.Observe.ReturnRequestID,
		GRPCOptions:     gopts,
	})
	serving := false
	defer func() {
		if !serving { // a start-up error: end the server's stream workers
			srv.GRPC().Stop()
		}
	}()
	live.serving(srv)
	stopJobs, err := m.startJobs(ctx, rt, srv, log, ob.metrics)
	if err != nil {
		return err
	}
	defer stopJobs()
	stopAdmin, err := m.startAdmin(live, srv, log, gopts)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", m.Listen)
	if err != nil {
		stopAdmin(ctx)
		return fmt.Errorf("listen: %w", err)
	}
	if err := live.listening(lis.Addr()); err != nil {
		lis.Close()
		stopAdmin(ctx)
		return err
	}
	// Stopped when Run returns: after the drain, so that probes see
	// NOT_SERVING while it lasts.
	stopHealth, err := m.startHealth(srv, log)
	if err != nil {
		lis.Close()
		stopAdmin(ctx)
		return err
	}
	defer stopHealth()
	stopHTTP, err := m.startHTTP(srv, sec, log)
	if err != nil {
		lis.Close()
		stopAdmin(ctx)
		return err
	}
	log.Info("detour serving", "addr", lis.Addr().String(), "region", m.Region, "zone", m.Zone,
		"config", source, "transport", sec.transport)
	if m.ready != nil {
		m.ready(lis.Addr())
	}
	served := make(chan error, 1)
	serving = true
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		stopHTTP(ctx)
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("detour draining", "grace", m.Grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), m.Grace)
	defer cancel()
	httpDone := make(chan struct{})
	go func() { stopHTTP(sctx); close(httpDone) }() // drains beside the gRPC face
	srv.Shutdown(sctx)
	<-httpDone
	stopAdmin(sctx)
	<-served
	log.Info("detour stopped")
	return nil
}

// startHealth serves srv's grpc.health.v1 statuses alone, in plaintext, on
// HealthListen: the kubelet's native gRPC probes cannot do TLS. There is no
// authentication there (health is public on every listener) and nothing but
// health, and reflection so that `grpcurl -plaintext ADDR
// grpc.health.v1.Health/Check` works without a .proto file (it lists only
// health and itself). stop ends the listener at once; health calls are
// instant.
func (m *Main) startHealth(srv *server.Server, log *slog.Logger) (stop func(), err error) {
	if m.HealthListen == "" {
		return func() {}, nil
	}
	lis, err := net.Listen("tcp", m.HealthListen)
	if err != nil {
		return nil, fmt.Errorf("health listen: %w", err)
	}
	gs := grpc.NewServer(auth.ServerHardening(auth.Hardening{})...)
	healthpb.RegisterHealthServer(gs, srv.HealthServer())
	reflection.Register(gs)
	log.Info("detour health serving", "addr", lis.Addr().String(), "transport", "plaintext, grpc.health.v1 and reflection only")
	if m.healthReady != nil {
		m.healthReady(lis.Addr())
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("health listener failed", "err", err)
		}
	}()
	return func() {
		gs.Stop()
		<-served
	}, nil
}
