// Command detour is the detour daemon: `detour serve` routes detour.v1.Router
// calls over the backends of a config file; `detour demo` starts a complete
// local stack (three simulated regions, one of them busy, and a fallback),
// and `detour dev etcd` an etcd for local use.
//
// The production build leaves demo and dev out (go build -tags nodemo, as
// the image, the Dockerfile and CI build it): they link an embedded etcd
// server (raft, bbolt) and the simulated backends, which serve never uses.
// demo.go, demo_etcd.go and dev.go are built without the tag, nodemo.go
// with it.
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
` + demoUsage + `
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
		return runDemo(ctx, args[1:], stdout, stderr)
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "detour: unknown command %q\n\n%s", args[0], usage)
	return errUsage
}
