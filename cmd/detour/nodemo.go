//go:build nodemo

package main

import (
	"context"
	"fmt"
	"io"
)

// This is the production build (-tags nodemo): `detour demo` and `detour
// dev etcd` are left out, and with them the embedded etcd server and the
// simulated backends. The commands say so and how to run them instead.

const demoUsage = `  demo    not in this build (-tags nodemo); from a source checkout:
  dev     go run ./cmd/detour demo | dev etcd
`

func runDemo(_ context.Context, _ []string, _, stderr io.Writer) error {
	return notInThisBuild(stderr, "demo")
}

func runDev(_ context.Context, _ []string, _, stderr io.Writer) error {
	return notInThisBuild(stderr, "dev etcd")
}

func notInThisBuild(stderr io.Writer, cmd string) error {
	fmt.Fprintf(stderr, "detour %s is not in this build: the production build (-tags nodemo) leaves out the embedded etcd and the simulated backends it needs.\n"+
		"From a source checkout: go run ./cmd/detour %s\n", cmd, cmd)
	return errUsage
}
