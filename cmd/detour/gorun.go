package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// parentPoll is how often a process started by `go run` checks that go run
// is still there.
const parentPoll = 250 * time.Millisecond

// startedByGoRun reports whether exe, this process's executable, is one
// `go run` built: go run leaves it in its build cache's temp dir as
// .../go-build*/b001/exe/NAME.
func startedByGoRun(exe string) bool {
	return filepath.Base(filepath.Dir(exe)) == "exe" && strings.Contains(exe, string(filepath.Separator)+"go-build")
}

// exitWithGoRun returns a context that also ends when the `go run` that
// started this process exits. go run passes Ctrl-C on (the terminal sends
// it to both) but not SIGTERM: `kill` on go run ends go run alone and would
// leave detour running on its ports, orphaned. A process not started by go
// run gets ctx itself. The stop that follows is logged on stderr. stop
// ends the watch and waits for it.
func exitWithGoRun(ctx context.Context, stderr io.Writer) (context.Context, func()) {
	exe, err := os.Executable()
	if err != nil || !startedByGoRun(exe) {
		return ctx, func() {}
	}
	return exitWithParent(ctx, os.Getppid, parentPoll, func() {
		fmt.Fprintln(stderr, "detour: the go run that started this process exited (go run does not pass SIGTERM on); stopping")
	})
}

// exitWithParent returns a context that ends with ctx or when getppid no
// longer returns what it returned at first: the parent exited and this
// process was handed to another (init, a subreaper). gone runs then, before
// the context ends. stop ends the watch and waits for its goroutine.
func exitWithParent(ctx context.Context, getppid func() int, every time.Duration, gone func()) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	parent := getppid()
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if getppid() != parent {
					gone()
					cancel()
					return
				}
			}
		}
	})
	return ctx, func() { cancel(); wg.Wait() }
}
