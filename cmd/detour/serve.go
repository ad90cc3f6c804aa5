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

	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// Main is one detour process: config, router and gRPC server. Tests run it in
// process on port 0.
type Main struct {
	ConfigPath string
	Listen     string
	Region     string
	Zone       string
	// Grace bounds the drain of in-flight calls at shutdown.
	Grace  time.Duration
	Logger *slog.Logger

	// config, when set, is used instead of reading ConfigPath (demo, tests).
	config *regions.Config
	// ready, when set, receives the bound address once serving.
	ready func(addr net.Addr)
}

func parseServe(args []string, stderr io.Writer) (*Main, error) {
	m := &Main{}
	fs := flag.NewFlagSet("detour serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&m.ConfigPath, "config", "", "path of the YAML config document (required)")
	fs.StringVar(&m.Listen, "listen", "127.0.0.1:50051", "address of the detour.v1.Router gRPC listener")
	fs.StringVar(&m.Region, "region", os.Getenv("DETOUR_REGION"), "region of this instance (env DETOUR_REGION); its backends are tried first")
	fs.StringVar(&m.Zone, "zone", os.Getenv("DETOUR_ZONE"), "zone of this instance (env DETOUR_ZONE); its backends are preferred")
	fs.DurationVar(&m.Grace, "grace", 30*time.Second, "how long in-flight calls may run after SIGTERM")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	var problems []string
	if m.ConfigPath == "" {
		problems = append(problems, "--config is required")
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	if m.Grace < 0 {
		problems = append(problems, "--grace must be >= 0")
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "detour serve:", p)
		}
		return nil, errUsage
	}
	m.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	return m, nil
}

// Run serves until ctx ends, then drains in-flight calls for at most Grace.
func (m *Main) Run(ctx context.Context) error {
	log := m.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg, source := m.config, "inline"
	if cfg == nil {
		var err error
		if cfg, err = regions.LoadFile(m.ConfigPath); err != nil {
			return err
		}
		source = "file:" + m.ConfigPath
	} else if err := cfg.Validate(); err != nil {
		return err
	}
	snap := &regions.Snapshot{Config: cfg, Source: source, AppliedAt: time.Now()}
	rt, err := router.New(snap, router.Options{Region: m.Region, Zone: m.Zone, Logger: log})
	if err != nil {
		return err
	}
	defer rt.Close()
	srv := server.New(rt, server.Options{
		MaxRequestBytes: cfg.Limits.MaxRequestBytes,
		DefaultDeadline: cfg.Limits.DefaultDeadline.D(),
		Logger:          log,
	})
	lis, err := net.Listen("tcp", m.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("detour serving", "addr", lis.Addr().String(), "region", m.Region, "zone", m.Zone,
		"config", source, "transport", "plaintext (TLS not configured)")
	if m.ready != nil {
		m.ready(lis.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("detour draining", "grace", m.Grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), m.Grace)
	defer cancel()
	srv.Shutdown(sctx)
	<-served
	log.Info("detour stopped")
	return nil
}
