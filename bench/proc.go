package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
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
	workDir    string // temp dir for configs and logs, removed by cleanupBinaries
	workDirErr error
}

// repoRoot is the directory holding the module's go.mod.
func repoRoot() (string, error) {
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

// buildBinaries builds cmd/detour and cmd/fakellm into a temp dir, once.
// DETOUR_BENCH_BIN, if set, names a directory that already holds both.
func buildBinaries() (detour, fake string, err error) {
	binaries.once.Do(func() {
		if d := os.Getenv("DETOUR_BENCH_BIN"); d != "" {
			binaries.detour, binaries.fakellm = filepath.Join(d, "detour"), filepath.Join(d, "fakellm")
			return
		}
		root, err := repoRoot()
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

// workDir is a temp dir for configs and child logs, kept when
// DETOUR_BENCH_KEEP is set.
func workDir() (string, error) {
	if binaries.workDir == "" && binaries.workDirErr == nil {
		binaries.workDir, binaries.workDirErr = os.MkdirTemp("", "detour-bench-")
	}
	return binaries.workDir, binaries.workDirErr
}

// cleanup removes the temp dirs made by this process.
func cleanup() {
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	if binaries.workDir != "" && os.Getenv("DETOUR_BENCH_KEEP") == "" {
		os.RemoveAll(binaries.workDir)
	}
}

// child is a process started by bench. Its stdout and stderr go to a log
// file; each line is also offered to the callbacks.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string

	mu      sync.Mutex
	watch   []*watcher
	tail    []string
	done    chan struct{}
	exitErr error
	readers sync.WaitGroup
}

// startChild starts bin with args. ready is called on every output line
// until it returns true; startChild waits for that (or for timeout).
func startChild(name, bin string, args []string, ready func(line string) bool, timeout time.Duration, env ...string) (*child, error) {
	dir, err := workDir()
	if err != nil {
		return nil, err
	}
	logf, err := os.CreateTemp(dir, name+"-*.log")
	if err != nil {
		return nil, err
	}
	c := &child{name: name, logPath: logf.Name(), done: make(chan struct{})}
	childrenMu.Lock()
	children = append(children, c)
	childrenMu.Unlock()
	c.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		c.cmd.Env = append(os.Environ(), env...)
	}
	// The child dies with bench, so an interrupted run leaves no load behind.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	readyc := make(chan struct{})
	var readyOnce sync.Once
	c.onLine(func(line string) bool {
		if ready(line) {
			readyOnce.Do(func() { close(readyc) })
			return true
		}
		return false
	})
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var logMu sync.Mutex
	read := func(r io.Reader) {
		defer c.readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			fmt.Fprintln(logf, line)
			logMu.Unlock()
			c.offer(line)
		}
	}
	c.readers.Add(2)
	go read(stdout)
	go read(stderr)
	go func() {
		c.readers.Wait()
		err := c.cmd.Wait()
		logf.Close()
		c.mu.Lock()
		c.exitErr = err
		c.mu.Unlock()
		close(c.done)
	}()
	select {
	case <-readyc:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v\n%s", name, c.err(), c.tailText())
	case <-time.After(timeout):
		c.kill()
		return nil, fmt.Errorf("%s not ready after %v\n%s", name, timeout, c.tailText())
	}
}

func (c *child) offer(line string) {
	c.mu.Lock()
	c.tail = append(c.tail, line)
	if len(c.tail) > 20 {
		c.tail = c.tail[len(c.tail)-20:]
	}
	ws := slices.Clone(c.watch)
	c.mu.Unlock()
	for _, w := range ws {
		if !w.done.Load() && w.f(line) {
			w.done.Store(true)
		}
	}
}

// watcher is a line callback; done once it returned true.
type watcher struct {
	f    func(line string) bool
	done atomic.Bool
}

// onLine calls f for every later output line until f returns true. f may be
// called from two goroutines at once (stdout and stderr).
func (c *child) onLine(f func(line string) bool) {
	c.mu.Lock()
	c.watch = append(c.watch, &watcher{f: f})
	c.mu.Unlock()
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exitErr
}

func (c *child) tailText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("(log %s)\n  %s", c.logPath, strings.Join(c.tail, "\n  "))
}

// alive reports whether the process has not exited.
func (c *child) alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// signal sends sig and returns at once.
func (c *child) signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// wait waits up to d for the process to exit and reports whether it did.
func (c *child) wait(d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// stop sends SIGTERM, waits up to 10 s, then kills.
func (c *child) stop() {
	if !c.alive() {
		return
	}
	c.signal(syscall.SIGTERM)
	if !c.wait(10 * time.Second) {
		c.kill()
	}
}

func (c *child) kill() {
	c.cmd.Process.Kill()
	c.wait(5 * time.Second)
}

// procSample is what /proc says about a process at one moment.
type procSample struct {
	CPU     time.Duration // user + system, all threads
	RSS     int64         // bytes
	HWM     int64         // peak RSS, bytes
	Threads int
}

// userHZ is the kernel's USER_HZ: 100 on every Linux architecture Go runs on
// that has /proc in clock ticks.
const userHZ = 100

func readProc(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return s, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.CPU = time.Duration(ut+st) * time.Second / userHZ
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			s.RSS = n << 10
		case "VmHWM":
			s.HWM = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, nil
}

func (c *child) proc() procSample {
	s, _ := readProc(c.pid())
	return s
}

// fake is a cmd/fakellm child process.
type fake struct {
	*child
	name, http, grpc string
}

// startFake starts cmd/fakellm on loopback ports with cfg, serving HTTP and,
// if withGRPC, gRPC.
func startFake(cfg fakellm.Config, withGRPC bool) (*fake, error) {
	_, bin, err := buildBinaries()
	if err != nil {
		return nil, err
	}
	st := cfg.Settings
	args := []string{"-http", "127.0.0.1:0",
		"-name", cfg.Name, "-region", cfg.Region,
		"-latency", st.Latency.String(), "-jitter", st.Jitter.String(),
		"-busy-rate", ftoa(st.BusyRate), "-qps", ftoa(st.QPS), "-burst", strconv.Itoa(st.Burst),
		"-capacity", ftoa(st.Capacity), "-max-concurrency", strconv.Itoa(st.MaxConcurrency),
		"-hang-rate", ftoa(st.HangRate), "-tokens-per-sec", ftoa(st.TokensPerSec),
		"-garbage-rate", ftoa(st.GarbageRate), "-cut-rate", ftoa(st.CutRate)}
	if withGRPC {
		args = append(args, "-grpc", "127.0.0.1:0")
	}
	f := &fake{name: cfg.Name}
	var mu sync.Mutex
	ready := func(line string) bool {
		mu.Lock()
		defer mu.Unlock()
		if a, ok := strings.CutPrefix(line, "fakellm: http listening on "); ok {
			f.http = a
		}
		if a, ok := strings.CutPrefix(line, "fakellm: grpc listening on "); ok {
			f.grpc = a
		}
		return f.http != "" && (!withGRPC || f.grpc != "")
	}
	c, err := startChild("fakellm-"+cfg.Name, bin, args, ready, 20*time.Second)
	if err != nil {
		return nil, err
	}
	f.child = c
	return f, nil
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

var ctlClient = &http.Client{Timeout: 5 * time.Second}

// stats reads GET /stats.
func (f *fake) stats() (fakellm.Stats, error) {
	var st fakellm.Stats
	resp, err := ctlClient.Get("http://" + f.http + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s /stats: %s", f.name, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// control POSTs a /control patch such as {"busy_rate": 0.5}.
func (f *fake) control(patch map[string]any) error {
	b, _ := json.Marshal(patch)
	resp, err := ctlClient.Post("http://"+f.http+"/control", "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s /control %s: %s %s", f.name, b, resp.Status, body)
	}
	return nil
}

// openaiEndpoint is the base URL of f for an openai-kind backend.
func (f *fake) openaiEndpoint() string { return "http://" + f.http + "/v1" }

// detourEnv is added to the environment of detour children (hop
// --detour-env), e.g. GODEBUG settings to try.
var detourEnv []string

// detourProc is a `detour serve` child process.
type detourProc struct {
	*child
	addr    string
	metrics string // host:port of /metrics, "" when serve has no --metrics
}

// detourServeHas reports whether `detour serve -h` lists flag.
func detourServeHas(flag string) bool {
	bin, _, err := buildBinaries()
	if err != nil {
		return false
	}
	out, _ := exec.Command(bin, "serve", "-h").CombinedOutput()
	return bytes.Contains(out, []byte("-"+flag+" ")) || bytes.Contains(out, []byte("-"+flag+"\n"))
}

// startDetour writes cfgYAML to a file and runs `detour serve` on a loopback
// port. extra are more serve flags. withMetrics asks for --metrics on a
// loopback port when the binary has that flag.
func startDetour(cfgYAML, region string, withMetrics bool, extra ...string) (*detourProc, error) {
	return startDetourBin("", cfgYAML, region, withMetrics, extra...)
}

// startDetourBin is startDetour with another detour binary (bin), or this
// repository's when bin is empty.
func startDetourBin(bin, cfgYAML, region string, withMetrics bool, extra ...string) (*detourProc, error) {
	own, _, err := buildBinaries()
	if err != nil {
		return nil, err
	}
	if bin == "" {
		bin = own
	}
	dir, err := workDir()
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "detour-*.yaml")
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteString(cfgYAML); err != nil {
		return nil, err
	}
	f.Close()
	args := []string{"serve", "--config", f.Name(), "--listen", "127.0.0.1:0", "--region", region}
	d := &detourProc{}
	if withMetrics && detourServeHas("metrics") {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		d.metrics = addr
		args = append(args, "--metrics", addr)
	}
	args = append(args, extra...)
	ready := func(line string) bool {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "detour serving" && l.Addr != "" {
			d.addr = l.Addr
			return true
		}
		return false
	}
	c, err := startChild("detour", bin, args, ready, 20*time.Second, detourEnv...)
	if err != nil {
		return nil, err
	}
	d.child = c
	return d, nil
}

// logLine is the part of detour's JSON log lines that bench reads.
type logLine struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Msg     string    `json:"msg"`
	Backend string    `json:"backend"`
	From    string    `json:"from"`
	To      string    `json:"to"`
}

// breakerEvent is a breaker transition read from detour's log.
type breakerEvent struct {
	At       time.Time
	Backend  string
	From, To string
}

// watchBreakers records every breaker transition detour logs.
func (d *detourProc) watchBreakers() func() []breakerEvent {
	var mu sync.Mutex
	var evs []breakerEvent
	d.onLine(func(line string) bool {
		if !strings.Contains(line, "breaker") {
			return false
		}
		var l logLine
		if json.Unmarshal([]byte(line), &l) != nil || l.To == "" || l.Backend == "" {
			return false
		}
		mu.Lock()
		evs = append(evs, breakerEvent{At: l.Time, Backend: l.Backend, From: l.From, To: l.To})
		mu.Unlock()
		return false
	})
	return func() []breakerEvent {
		mu.Lock()
		defer mu.Unlock()
		return append([]breakerEvent(nil), evs...)
	}
}

// metricsSample reads go_goroutines and go_memstats_heap_inuse_bytes from
// detour's /metrics.
func (d *detourProc) metricsSample(ctx context.Context) (goroutines, heap float64, err error) {
	if d.metrics == "" {
		return 0, 0, errors.New("no --metrics")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metrics+"/metrics", nil)
	resp, err := ctlClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	goroutines, heap = -1, -1
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			goroutines, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			heap, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if goroutines < 0 || heap < 0 {
		return 0, 0, errors.New("/metrics lacks go_goroutines or go_memstats_heap_inuse_bytes")
	}
	return goroutines, heap, sc.Err()
}

// children are every process bench started, for foreignCPU.
var (
	childrenMu sync.Mutex
	children   []*child
)

// cpuMark is a reading of the whole machine's busy CPU and of bench's own
// (this process and its live children).
type cpuMark struct {
	at         time.Time
	busy, ours time.Duration
}

func markCPU() cpuMark {
	m := cpuMark{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		// cpu user nice system idle iowait irq softirq steal ...
		for i, v := range f {
			if i == 0 || i == 4 || i == 5 || i > 8 {
				continue
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			m.busy += time.Duration(n) * time.Second / userHZ
		}
	}
	if s, err := readProc(os.Getpid()); err == nil {
		m.ours += s.CPU
	}
	childrenMu.Lock()
	cs := slices.Clone(children)
	childrenMu.Unlock()
	for _, c := range cs {
		if c.alive() {
			m.ours += c.proc().CPU
		}
	}
	return m
}

// foreignCPU is how many cores other processes used on average since m: a
// run during which this is well above zero shared the machine.
func (m cpuMark) foreignCPU() float64 {
	n := markCPU()
	wall := n.at.Sub(m.at)
	if wall <= 0 {
		return 0
	}
	return max(0, float64((n.busy-m.busy)-(n.ours-m.ours))/float64(wall))
}

// startSelf runs this bench binary's scenario (args[0]) as a child and waits
// for the log line that starts with readyPrefix; the address is the rest of
// that line without readySuffix.
func startSelf(args []string, readyPrefix, readySuffix string, env ...string) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	var addr string
	c, err := startChild(args[0], self, args, func(line string) bool {
		if a, ok := strings.CutPrefix(line, readyPrefix); ok {
			addr = strings.TrimSuffix(a, readySuffix)
			return true
		}
		return false
	}, 10*time.Second, env...)
	if err != nil {
		return nil, "", err
	}
	return c, addr, nil
}

// servingPrefix and servingSuffix frame the address in detour's JSON
// "detour serving" line as the profiled variants print it.
const (
	servingPrefix = `{"msg":"detour serving","addr":"`
	servingSuffix = `"}`
)

// alternate runs measure for each of n targets in every round, reversing the
// order on odd rounds (A B, B A, ...) so drift on a shared machine falls on
// both alike. It stops at the first error or when ctx ends.
func alternate(ctx context.Context, rounds, n int, measure func(round, i int) error) error {
	for round := range rounds {
		for k := range n {
			i := k
			if round%2 == 1 {
				i = n - 1 - k
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := measure(round, i); err != nil {
				return err
			}
		}
	}
	return nil
}

// logSays reports whether the log file at path holds s, reading it until it
// does or wait passes.
func logSays(path, s string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
