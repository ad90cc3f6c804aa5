// Command detour is the detour daemon: `detour serve` routes detour.v1.Router
// calls over the backends of a config file; `detour demo` starts a complete
// local stack (three simulated regions, one of them busy, and a fallback).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, unwatch := exitWithGoRun(ctx, os.Stderr)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	unwatch()
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "detour:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `usage: detour <command> [flags]

commands:
  serve   route detour.v1.Router calls over the backends of a config file
  demo    start a local stack: three simulated regions (one busy), a fallback,
          and the router on 127.0.0.1:50051
  dev     dev etcd: an etcd for local use on 127.0.0.1:2379, for
          'serve --etcd-endpoints' and detourctl

Run 'detour <command> -h' for the flags of a command.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "serve":
		m, err := parseServe(args[1:], stderr)
		if err != nil {
			return err
		}
		return m.Run(ctx)
	case "demo":
		d, err := parseDemo(args[1:], stderr)
		if err != nil {
			return err
		}
		return d.Run(ctx, stdout)
	case "dev":
		d, err := parseDev(args[1:], stderr)
		if err != nil {
			return err
		}
		return d.Run(ctx, stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "detour: unknown command %q\n\n%s", args[0], usage)
	return errUsage
}
