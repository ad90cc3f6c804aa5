// Command detourctl is detour's admin CLI. It validates config documents
// offline with detour's own validator, applies them to etcd with a
// compare-and-swap so that a concurrent edit is refused rather than
// overwritten, drains and undrains backends on every replica through etcd's
// drain keys, and reads an instance's state over detour.v1.Admin.
//
//	detourctl config validate -f detour.yaml
//	detourctl --endpoints 127.0.0.1:2379 config apply -f detour.yaml
//	detourctl --endpoints 127.0.0.1:2379 drain eu-west-a
//	detourctl status --addr 127.0.0.1:50051 -o json
//	detourctl reset-breaker --addr 127.0.0.1:50051 eu-west-a
//	detourctl usage --addr 127.0.0.1:50051 --tenant search --since 7d
//	detourctl status --addr detour:50052 --tls-ca ca.crt --tls-cert me.crt --tls-key me.key
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
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	code := exitCode(err)
	if code == 1 && !errors.Is(err, errReported) {
		fmt.Fprintln(os.Stderr, "detourctl:", err)
	}
	os.Exit(code)
}

// exitCode is the exit status for run's error: 0 done, 1 failed, 2 bad
// command line.
func exitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	return 1
}

var (
	// errUsage: bad command line, explained on stderr (exit 2).
	errUsage = errors.New("usage")
	// errReported: the command failed and said why on its output (exit 1).
	errReported = errors.New("reported")
)

const usage = `usage: detourctl [global flags] <command> [flags]

commands:
  config validate -f FILE   check a config document offline (exit 1 if invalid)
  config apply -f FILE      validate, then write it to etcd with compare-and-swap
  config get                print the document in etcd (revision and drains on stderr)
  drain BACKEND             drain a backend on every replica (etcd drain key)
  undrain BACKEND           undrain it
  status                    an instance's config, backends and their capacity limits (detour.v1.Admin, at --addr)
  reset-breaker BACKEND     close a backend's breaker on the instance at --addr, and clear the fleet's cooldown
  jobs list                 asynchronous jobs (detour.v1.Jobs, at --addr): --tenant, --state, --limit, --page
  jobs get ID               a job, with its answer or error
  jobs cancel ID            cancel a queued job, or stop a running one
  usage [--tenant T] [--since 24h]
                            tokens, spend and savings per tenant and model, and budgets (detour.v1.Admin at --addr;
                            the fleet's counters in Redis, or that instance's own without Redis)

global flags (before or after the command):
  --endpoints LIST          etcd endpoints (env DETOUR_ETCD_ENDPOINTS; default 127.0.0.1:2379)
  --key-prefix PREFIX       root of detour's keys (default /detour)
  --cacert, --cert, --key   etcd TLS: CA bundle, client certificate and key
  --user NAME[:PASSWORD]    etcd user (password also from --password-file or $DETOUR_ETCD_PASSWORD)
  --addr HOST:PORT          detour.v1.Admin of an instance (default 127.0.0.1:50051)
  --tls-ca FILE             Admin TLS: CA bundle for detour's certificate (any --tls-* flag turns TLS on)
  --tls-cert, --tls-key     Admin mutual TLS: an admin's client certificate and key
  --tls-server-name NAME    Admin TLS: name to verify in detour's certificate (default: the host of --addr)
  --token-file FILE         Admin: an admin's bearer token (sent in the clear only to a loopback --addr)
  --timeout D               bound on each command (default 10s)
  -o text|json              output format (default text)

Run 'detourctl <command> -h' for the flags of a command.
`

// command is one detourctl command; args are its arguments after the
// command words.
type command func(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error

var commands = map[string]command{
	"config validate": configValidate,
	"config apply":    configApply,
	"config get":      configGet,
	"drain":           drain,
	"undrain":         undrain,
	"status":          statusCmd,
	"reset-breaker":   resetBreakerCmd,
	"jobs list":       jobsList,
	"jobs get":        jobsGet,
	"jobs cancel":     jobsCancel,
	"usage":           usageCmd,
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g := newGlobals()
	root := flag.NewFlagSet("detourctl", flag.ContinueOnError)
	root.SetOutput(stderr)
	root.Usage = func() { fmt.Fprint(stderr, usage) }
	g.register(root)
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	rest := root.Args()
	if len(rest) == 0 || rest[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(rest) == 0 {
			return errUsage
		}
		return nil
	}
	name := rest[0]
	if name == "config" || name == "jobs" {
		if len(rest) < 2 {
			fmt.Fprintf(stderr, "detourctl %s: want %s\n\n%s", name, map[string]string{"config": "validate, apply or get", "jobs": "list, get or cancel"}[name], usage)
			return errUsage
		}
		name += " " + rest[1]
		rest = rest[1:]
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "detourctl: unknown command %q\n\n%s", name, usage)
		return errUsage
	}
	return cmd(ctx, g, rest[1:], stdout, stderr)
}
