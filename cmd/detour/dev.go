//go:build !nodemo

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"

	"github.com/detour-dev/detour/internal/devetcd"
)

// DevEtcd runs an etcd member in the process for local use: `detour serve
// --etcd-endpoints`, `detourctl --endpoints` and their tests on one
// machine. It is the real etcd (internal/devetcd) with fsync off and no TLS
// or authentication: never a production store.
type DevEtcd struct {
	// Listen is the client address. The default, 127.0.0.1:2379, is etcd's
	// own and detourctl's default endpoint.
	Listen string
	// DataDir keeps the data across runs. Empty means a temp dir removed on
	// exit.
	DataDir string

	// ready, when set, receives the client endpoint once serving (tests).
	ready func(endpoint string)
}

// runDev is `detour dev etcd`.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d, err := parseDev(args, stderr)
	if err != nil {
		return err
	}
	return d.Run(ctx, stdout)
}

func parseDev(args []string, stderr io.Writer) (*DevEtcd, error) {
	if len(args) == 0 || args[0] != "etcd" {
		fmt.Fprint(stderr, "usage: detour dev etcd [--listen 127.0.0.1:2379] [--data-dir DIR]\n\n"+
			"  etcd   an etcd for local use, in this process, until Ctrl-C or SIGTERM\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil, flag.ErrHelp
		}
		return nil, errUsage
	}
	d := &DevEtcd{}
	fs := flag.NewFlagSet("detour dev etcd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&d.Listen, "listen", "127.0.0.1:2379", "client address of the etcd (a loopback address: there is no TLS or authentication)")
	fs.StringVar(&d.DataDir, "data-dir", "", "keep the data in this directory across runs (default: a temp dir removed on exit)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "detour dev etcd: unexpected arguments %q\n", fs.Args())
		return nil, errUsage
	}
	if _, _, err := net.SplitHostPort(d.Listen); err != nil {
		fmt.Fprintf(stderr, "detour dev etcd: --listen %q: %v\n", d.Listen, err)
		return nil, errUsage
	}
	return d, nil
}

// Run serves until ctx ends, then stops the member (and removes its temp
// dir).
func (d *DevEtcd) Run(ctx context.Context, stdout io.Writer) error {
	srv, err := devetcd.Start(d.DataDir, devetcd.WithClientAddr(d.Listen))
	if err != nil {
		return fmt.Errorf("dev etcd on %s: %w", d.Listen, err)
	}
	defer srv.Close()
	ep := srv.Endpoints()[0]
	data := srv.Dir() + " (kept)"
	if d.DataDir == "" {
		data = srv.Dir() + " (removed on exit)"
	}
	fmt.Fprintf(stdout, `etcd for local use is serving (in this process; no fsync, TLS or authentication: never for production).

  endpoint    %[1]s
  data        %[2]s

Put a config document there and serve it:

  detourctl --endpoints %[1]s config apply -f detour.yaml
  detour serve --etcd-endpoints %[1]s --lkg /tmp/detour-lkg.yaml

Ctrl-C stops it.
`, ep, data)
	if d.ready != nil {
		d.ready(ep)
	}
	<-ctx.Done()
	return nil
}
