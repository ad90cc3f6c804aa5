// Package harness runs what bench measures as child processes on loopback:
// cmd/detour (its production build, -tags nodemo) and cmd/fakellm built
// once per bench process, a private redis-server, and bench's own helper
// servers; it reads their CPU and memory from /proc, and detour's state
// through what detour offers an operator: the Admin service's Status and
// /metrics.
//
//	fk, err := harness.StartFake(fakellm.Config{Name: "a", Region: "r"}, false)
//	...
//	defer fk.Stop()
//	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "r", Metrics: true})
//	...
//	defer dt.Stop()
//	st, err := dt.Status(ctx) // detour.v1.Admin/Status
//
// Every child dies with bench (Pdeathsig), so an interrupted run leaves no
// load behind. DETOUR_BENCH_BIN names a directory holding prebuilt detour
// and fakellm binaries (CI); DETOUR_BENCH_KEEP=1 keeps the children's logs
// and configs (Cleanup removes them otherwise).
package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// binaries are cmd/detour and cmd/fakellm built once per bench process, so
// that the processes under measurement do not share the load generator's Go
// runtime.
var binaries struct {
	once       sync.Once
	dir        string
	detour     string
	fakellm    string
	err        error
	workDir    string // temp dir for configs and logs, removed by Cleanup
	workDirErr error
	mu         sync.Mutex
}

// RepoRoot is the directory holding the module's go.mod.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run bench from inside the detour repository (no go.mod found)")
	}
	return filepath.Dir(gomod), nil
}

// Binaries returns the paths of the detour and fakellm binaries, building
// both into a temp dir on first use (detour with -tags nodemo, its
// production build). DETOUR_BENCH_BIN, if set, names a directory that
// already holds both.
func Binaries() (detour, fake string, err error) {
	binaries.once.Do(func() {
		if d := os.Getenv("DETOUR_BENCH_BIN"); d != "" {
			binaries.detour, binaries.fakellm = filepath.Join(d, "detour"), filepath.Join(d, "fakellm")
			return
		}
		root, err := RepoRoot()
		if err != nil {
			binaries.err = err
			return
		}
		dir, err := os.MkdirTemp("", "detour-bench-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.dir = dir
		// -tags nodemo: detour's production build, as the image has it.
		cmd := exec.Command("go", "build", "-tags", "nodemo", "-o", dir+string(os.PathSeparator), "./cmd/detour", "./cmd/fakellm")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binaries.err = fmt.Errorf("go build -tags nodemo ./cmd/detour ./cmd/fakellm: %w\n%s", err, out)
			return
		}
		binaries.detour, binaries.fakellm = filepath.Join(dir, "detour"), filepath.Join(dir, "fakellm")
	})
	return binaries.detour, binaries.fakellm, binaries.err
}

// WorkDir is a temp dir for configs and child logs, made on first use and
// kept when DETOUR_BENCH_KEEP is set.
func WorkDir() (string, error) {
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if binaries.workDir == "" && binaries.workDirErr == nil {
		binaries.workDir, binaries.workDirErr = os.MkdirTemp("", "detour-bench-")
	}
	return binaries.workDir, binaries.workDirErr
}

// Cleanup removes the temp dirs this process made (the work dir only
// without DETOUR_BENCH_KEEP). Call it once every child has stopped.
func Cleanup() {
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	if binaries.workDir != "" && os.Getenv("DETOUR_BENCH_KEEP") == "" {
		os.RemoveAll(binaries.workDir)
	}
}

// FreePort returns a loopback address that was free a moment ago.
func FreePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
