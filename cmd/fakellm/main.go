// Command fakellm runs a simulated DeepSeek-like LLM backend: the OpenAI
// chat completions API over HTTP and detour.v1.Router over gRPC, with
// latency, busy answers, a QPS limit and faults set by flags and changed
// live through POST /control. See package internal/fakellm.
//
//	fakellm -http 127.0.0.1:8081 -grpc 127.0.0.1:9091 -region eu-west -busy-rate 0.3 -qps 500
//	fakellm -h2c                               # HTTP/2 without TLS beside HTTP/1.1
//	fakellm -tls -tls-cert-out /tmp/fake.crt   # HTTPS, h2 by ALPN; trust /tmp/fake.crt
//
// It prints the bound addresses and serves until SIGINT or SIGTERM. Bad
// flags exit with status 2.
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

	"github.com/detour-dev/detour/internal/fakellm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run serves until ctx ends and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fakellm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http", "127.0.0.1:8081", "`address` of the HTTP API, empty to serve none")
	grpcAddr := fs.String("grpc", "", "`address` of the detour.v1.Router gRPC service, empty to serve none")
	certOut := fs.String("tls-cert-out", "", "with -tls, write the self-signed certificate (PEM) to this `file` for clients to trust")
	var cfg fakellm.Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2 // the flag package printed the error and usage
	}
	usageErr := func(err error) int {
		fmt.Fprintf(stderr, "fakellm: %v\n", err)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return usageErr(fmt.Errorf("unexpected arguments %q", fs.Args()))
	case *httpAddr == "" && *grpcAddr == "":
		return usageErr(errors.New("-http and -grpc are both empty: nothing to serve"))
	case *certOut != "" && !cfg.TLS:
		return usageErr(errors.New("-tls-cert-out needs -tls"))
	case cfg.TLS && *httpAddr == "":
		return usageErr(errors.New("-tls needs -http"))
	}
	if err := cfg.Validate(); err != nil {
		return usageErr(err)
	}

	srv := fakellm.New(cfg)
	if err := srv.Start(*httpAddr, *grpcAddr); err != nil {
		fmt.Fprintf(stderr, "fakellm: %v\n", err)
		return 1
	}
	if *certOut != "" {
		if err := os.WriteFile(*certOut, srv.CertPEM(), 0o644); err != nil {
			fmt.Fprintf(stderr, "fakellm: -tls-cert-out: %v\n", err)
			srv.Close()
			return 1
		}
	}
	if a := srv.HTTPAddr(); a != "" {
		fmt.Fprintf(stdout, "fakellm: http listening on %s\n", a)
	}
	if a := srv.GRPCAddr(); a != "" {
		fmt.Fprintf(stdout, "fakellm: grpc listening on %s\n", a)
	}
	<-ctx.Done()
	if err := srv.Close(); err != nil {
		fmt.Fprintf(stderr, "fakellm: %v\n", err)
		return 1
	}
	return 0
}
