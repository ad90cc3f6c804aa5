package main

import (
	"context"
	"flag"
	"io"
	"strings"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/bench/internal/load"
)

// A scenario is one benchmark. main runs every scenario the same way, in
// five steps:
//
//	flags   declare its flags on fs; their values land in the scenario
//	setup   check the flags and start what every run shares; stop undoes
//	        it, also after an error
//	run     offer the load and record what it measured (progress on stderr)
//	judge   decide from that record alone, with no I/O, so that tests can
//	        call it: the pass criteria missed (exit 3), or an error when the
//	        run measured nothing usable (exit 1); it may keep per-part
//	        verdicts for report
//	report  write the Markdown tables and verdicts
//
// An error from setup or run means the scenario could not run (exit 1).
type scenario interface {
	flags(fs *flag.FlagSet)
	setup(ctx context.Context) (stop func(), err error)
	run(ctx context.Context) error
	judge() (misses []string, err error)
	report(w io.Writer)
}

// runScenario runs s's five steps with args as its command line.
func runScenario(ctx context.Context, name string, s scenario, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	s.flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	stop, err := s.setup(ctx)
	if stop != nil {
		defer stop() // also what a failed setup had started
	}
	if err != nil {
		return err
	}
	if err := s.run(ctx); err != nil {
		return err
	}
	misses, err := s.judge()
	s.report(stdout)
	if err != nil {
		return err
	}
	if len(misses) > 0 {
		return missed("%s", strings.Join(misses, "; "))
	}
	return nil
}

// stack is what a setup started, stopped in reverse order.
type stack struct{ stops []func() }

func (s *stack) add(stop func()) { s.stops = append(s.stops, stop) }

// stop stops everything added, last first.
func (s *stack) stop() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
	s.stops = nil
}

// dial opens a client connection closed by stop.
func (s *stack) dial(addr string) (*grpc.ClientConn, error) {
	conn, err := load.Dial(addr)
	if err != nil {
		return nil, err
	}
	s.add(func() { conn.Close() })
	return conn, nil
}
