package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/detour-dev/detour/regions/etcd"
)

// globals are the flags every command takes.
type globals struct {
	etcd    etcd.Config
	admin   adminConn // for the commands that call detour.v1.Admin
	timeout time.Duration
	output  string
}

func newGlobals() *globals {
	g := &globals{timeout: 10 * time.Second, output: "text"}
	g.admin.addr = "127.0.0.1:50051"
	g.etcd.Endpoints = []string{"127.0.0.1:2379"}
	if env := os.Getenv("DETOUR_ETCD_ENDPOINTS"); env != "" {
		g.etcd.Endpoints = splitList(env)
	}
	g.etcd.Prefix = etcd.DefaultPrefix
	g.etcd.Password = os.Getenv("DETOUR_ETCD_PASSWORD")
	return g
}

// register adds the global flags to fs; every command's flag set has them,
// so they may come before or after the command.
func (g *globals) register(fs *flag.FlagSet) {
	fs.Func("endpoints", "comma-separated etcd endpoints (env DETOUR_ETCD_ENDPOINTS)", func(s string) error {
		g.etcd.Endpoints = splitList(s)
		if len(g.etcd.Endpoints) == 0 {
			return errors.New("no endpoint")
		}
		return nil
	})
	fs.StringVar(&g.etcd.Prefix, "key-prefix", g.etcd.Prefix, "root of detour's keys in etcd")
	fs.StringVar(&g.etcd.CAFile, "cacert", g.etcd.CAFile, "CA bundle that verifies etcd's certificate")
	fs.StringVar(&g.etcd.CertFile, "cert", g.etcd.CertFile, "client certificate for etcd")
	fs.StringVar(&g.etcd.KeyFile, "key", g.etcd.KeyFile, "client key for etcd")
	fs.Func("user", "etcd user as NAME or NAME:PASSWORD", func(s string) error {
		name, pass, ok := strings.Cut(s, ":")
		g.etcd.Username = name
		if ok {
			g.etcd.Password = pass
		}
		return nil
	})
	fs.Func("password-file", "file holding the etcd password", func(p string) error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		g.etcd.Password = strings.TrimSpace(string(b))
		return nil
	})
	g.admin.register(fs)
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on the whole command")
	fs.Func("o", "output format: text or json", func(s string) error {
		if s != "text" && s != "json" {
			return fmt.Errorf("want text or json, got %q", s)
		}
		g.output = s
		return nil
	})
}

func (g *globals) json() bool { return g.output == "json" }

// store connects to etcd, once some endpoint is seen to accept
// connections (reachEtcd).
func (g *globals) store(ctx context.Context) (*etcd.Store, func(), error) {
	if err := reachEtcd(ctx, g.etcd.Endpoints, g.timeout); err != nil {
		return nil, nil, err
	}
	cli, err := g.etcd.Client()
	if err != nil {
		return nil, nil, err
	}
	return etcd.NewStore(cli, g.etcd.Keys()), func() { cli.Close() }, nil
}

func (g *globals) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, g.timeout)
}

// parse parses a command's flags (the globals included) and returns its
// positional arguments, which may come before, between or after the flags.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// newFlags is a command's flag set with the global flags.
func newFlags(name string, g *globals, stderr io.Writer, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("detourctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: detourctl %s\n\nflags (with the global flags of 'detourctl -h'):\n", synopsis)
		fs.PrintDefaults()
	}
	g.register(fs)
	return fs
}

// usageError explains a bad command line on stderr.
func usageError(stderr io.Writer, name, format string, args ...any) error {
	fmt.Fprintf(stderr, "detourctl %s: %s\n", name, fmt.Sprintf(format, args...))
	return errUsage
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
