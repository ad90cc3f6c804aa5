package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"time"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// profileDetour fetches a CPU profile of d (a `detour serve --metrics ADDR
// --pprof` child) covering the next dur and writes it to path. It returns at
// once; wait reports how the fetch ended. Run the load while it lasts.
func profileDetour(ctx context.Context, d *harness.Detour, dur time.Duration, path string) (wait func() error) {
	done := make(chan error, 1)
	go func() { done <- fetchProfile(ctx, d.Metrics, dur, path) }()
	return func() error { return <-done }
}

func fetchProfile(ctx context.Context, addr string, dur time.Duration, path string) error {
	if addr == "" {
		return errors.New("detour has no --metrics listener to profile through")
	}
	secs := max(int(dur.Round(time.Second)/time.Second), 1)
	ctx, cancel := context.WithTimeout(ctx, dur+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET /debug/pprof/profile: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// serveBenchServer is the body of the comparison servers bench runs as
// children (passthrough, constsrv): it listens on listen, writes a CPU
// profile to profile (when set) until it stops, registers its services with
// register, prints banner and the address, and serves until ctx ends, then
// stops gracefully within 5 s.
func serveBenchServer(ctx context.Context, listen, profile, banner string, register func(*grpc.Server)) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	srv := grpc.NewServer()
	register(srv)
	fmt.Printf("%s%s\n", banner, lis.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	<-served
	return nil
}

// profilePair profiles detour (running with --pprof) under one closed loop
// of conc callers through call for dur, its profile going to path; then
// starts the comparison server with start(path+suffix) (a child that writes
// its own CPU profile there until stopped) and runs the same loop through
// the call compare makes for it. It reports both throughputs on stderr.
func profilePair(ctx context.Context, scenario string, dt *harness.Detour, call load.Call, path, suffix string, conc int, dur time.Duration,
	start func(profile string) (*harness.Child, string, error), compare func(detourv1.RouterClient) load.Call) error {
	wait := profileDetour(ctx, dt, dur, path)
	r := load.ClosedLoop(ctx, conc, dur, 0, call)
	s := load.Summarize(r.Samples, r.Elapsed)
	if err := wait(); err != nil {
		return fmt.Errorf("detour profile: %w", err)
	}
	fmt.Fprintf(stderr, "%s: profiled detour serve: %.0f calls/s (%s); CPU profile in %s (go tool pprof -top %s)\n", scenario, s.Throughput, s.CodesText(), path, path)

	c, addr, err := start(path + suffix)
	if err != nil {
		return err
	}
	defer c.Stop()
	conn, err := load.Dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	r = load.ClosedLoop(ctx, conc, dur, 0, compare(detourv1.NewRouterClient(conn)))
	s = load.Summarize(r.Samples, r.Elapsed)
	c.Stop() // writes its profile
	fmt.Fprintf(stderr, "%s: profiled comparison server: %.0f calls/s (%s); CPU profile in %s%s\n", scenario, s.Throughput, s.CodesText(), path, suffix)
	return nil
}
