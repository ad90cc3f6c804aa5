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
	"runtime/pprof"
	"time"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

func init() {
	register("detour-profiled", "(helper for hop --cpuprofile) serve router+server as `detour serve` does, writing a CPU profile until SIGTERM", detourProfiled)
}

// detourProfiled runs the same router and server as `detour serve --config`
// (without etcd, Admin or metrics) under the CPU profiler, so that a hop run
// can say what dominates detour's CPU. It prints the same "detour serving"
// JSON line as detour, so startDetour-style readiness works.
func detourProfiled(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("detour-profiled", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config document")
	region := fs.String("region", "", "own region")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	out := fs.String("cpuprofile", "", "where to write the CPU profile")
	workers := fs.Uint("stream-workers", 0, "grpc.NumStreamWorkers for the server (0: a goroutine per RPC, as detour serve)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" || *out == "" {
		return errors.New("--config and --cpuprofile are required")
	}
	cfg, err := regions.LoadFile(*cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rt, err := router.New(&regions.Snapshot{Config: cfg, Source: "file:" + *cfgPath, AppliedAt: time.Now()}, router.Options{Region: *region, Logger: log})
	if err != nil {
		return err
	}
	defer rt.Close()
	sopts := server.Options{Logger: log}
	if *workers > 0 {
		sopts.GRPCOptions = append(sopts.GRPCOptions, grpc.NumStreamWorkers(uint32(*workers)))
	}
	srv := server.New(rt, sopts)
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	fmt.Printf(`{"msg":"detour serving","addr":%q}`+"\n", lis.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err = <-served:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Shutdown(sctx)
		cancel()
		<-served
		err = nil
	}
	pprof.StopCPUProfile()
	return err
}

// startProfiledDetour runs detour-profiled as a child with cfgYAML.
func startProfiledDetour(cfgYAML, region, profile string, extra ...string) (*detourProc, error) {
	dir, err := workDir()
	if err != nil {
		return nil, err
	}
	cf, err := os.CreateTemp(dir, "detour-profiled-*.yaml")
	if err != nil {
		return nil, err
	}
	io.WriteString(cf, cfgYAML)
	cf.Close()
	c, addr, err := startSelf(append([]string{"detour-profiled", "--config", cf.Name(), "--region", region, "--cpuprofile", profile}, extra...),
		servingPrefix, servingSuffix, detourEnv...)
	if err != nil {
		return nil, err
	}
	return &detourProc{child: c, addr: addr}, nil
}
