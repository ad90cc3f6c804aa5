// Command bench is detour's measurement harness. Each scenario starts what it
// needs on loopback (fakellm and detour as child processes built from
// cmd/fakellm and cmd/detour, detour as its production build, so the process
// measured does not share the load generator's Go runtime), drives load
// bounded in count and time with a Go load generator on the real gRPC client,
// and prints a Markdown table on stdout with a verdict per target.
//
// Exit status: 0 every target and pass criterion met; 3 the scenario ran to
// the end and missed one ("bench NAME: MISS: ..." on stderr, MISS in the
// table); 1 it could not run or measured nothing (a process that did not
// start, a first call that failed, a baseline that was not fault-free); 2 a
// bad command line.
//
//	go run ./bench list                 # the scenarios
//	go run ./bench <scenario> -h        # its flags
//	go run ./bench hop | seq | http | busy | jobs | soak | chaos | propagation ...
//
// Every scenario has one shape (the scenario interface): flags, setup, run,
// judge, report. A scenario is a file that registers itself from init; its
// judge is a function of what run recorded, tested in the file's _test.go.
// Shared code lives in internal packages: bench/internal/load (the load
// generators, samples and their summaries), bench/internal/report (Markdown
// and number formats) and bench/internal/harness (the child processes, and
// detour's state read through Admin.Status and /metrics). Configs are
// regions.Config values, validated and marshalled (configYAML).
// DETOUR_BENCH_BIN names a directory holding prebuilt detour and fakellm
// binaries (CI); DETOUR_BENCH_KEEP=1 keeps the child processes' logs and
// configs. Results and commands are recorded in BENCHMARKS.md and
// RELIABILITY.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/detour-dev/detour/bench/internal/harness"
)

// command is a registered scenario, or a helper that bench runs as a child
// of itself (a comparison server).
type command struct {
	name, summary string
	scenario      func() scenario
	helper        func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

// stderr receives progress lines; stdout gets only the Markdown report.
var stderr io.Writer = os.Stderr

// register adds a scenario; call it from init() in the scenario's file.
func register(name, summary string, s func() scenario) {
	add(command{name: name, summary: summary, scenario: s})
}

// registerHelper adds a helper command (not a benchmark: a server that a
// scenario starts as a child of bench).
func registerHelper(name, summary string, run func(context.Context, []string) error) {
	add(command{name: name, summary: summary, helper: run})
}

func add(c command) {
	if _, dup := commands[c.name]; dup {
		panic("bench: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// errMiss marks a scenario that ran to the end and missed a target or pass
// criterion: main exits 3 for it, and 1 for any other error.
var errMiss = errors.New("MISS")

// missed reports the targets or criteria a scenario missed after it ran.
func missed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMiss, fmt.Sprintf(format, args...))
}

// Exit statuses (see the package comment).
const (
	exitFailed = 1
	exitUsage  = 2
	exitMissed = 3
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./bench <scenario> [flags]\n\nscenarios:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nexit status: 0 every target met; 3 a target or pass criterion missed (MISS);\n1 the scenario could not run; 2 a bad command line")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "list" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(exitUsage)
		}
		return
	}
	c, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown scenario %q\n", os.Args[1])
		usage()
		os.Exit(exitUsage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if c.helper != nil {
		err = c.helper(ctx, os.Args[2:])
	} else {
		err = runScenario(ctx, c.name, c.scenario(), os.Args[2:], os.Stdout)
	}
	stop()
	harness.Cleanup()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	switch {
	case errors.Is(err, errMiss):
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", c.name, err)
		os.Exit(exitMissed)
	case err != nil:
		fmt.Fprintf(os.Stderr, "bench %s: failed to run: %v\n", c.name, err)
		os.Exit(exitFailed)
	}
}
