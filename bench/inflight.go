package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("inflight", "1,000 to 10,000 long calls held in flight through one detour: RSS, goroutines, upstream sockets and CPU per call, HTTP/1.1 vs h2c upstream, unary and streaming", func() scenario { return &inflight{} })
}

// inflight holds many long calls in flight through one detour child at
// once, as a replica serving hundreds of calls a second to an upstream that
// takes tens of seconds does, and reads what each call in flight costs:
// detour's RSS and goroutines above its idle baseline, its TCP connections
// to the upstream, and the CPU it burns while the calls wait.
//
// Each mode and count runs on fresh processes: fakellm (HTTP/1.1, h2c
// beside it, or HTTPS with h2 through ALPN and a certificate detour trusts) and detour with one backend on it, its adaptive limits off and
// no max_inflight, so that every call goes upstream at once. Unary calls
// wait --hold for their answer; streams get a token a second for about
// --hold.
type inflight struct {
	hold, window               time.Duration
	countsFlag, modesFlag      string
	counts                     []int
	modes                      []inflightMode
	maxKiB, maxGor, sockPer    float64
	h1MaxKiB, h1MaxGor         float64
	callsPerConn, maxStreamsUp int
	maxConns                   int
	pprofDir, detourEnv        string

	rows    []inflightRow
	foreign float64
}

// inflightMode is how the upstream is spoken to and what is asked of it.
type inflightMode struct {
	name   string // "h2c-unary"
	http2  bool   // h2c, or h2 negotiated through ALPN with tls
	tls    bool   // fakellm serves HTTPS with a certificate detour trusts
	stream bool
}

var inflightModes = []inflightMode{
	{"http1-unary", false, false, false},
	{"http1-stream", false, false, true},
	{"h2c-unary", true, false, false},
	{"h2c-stream", true, false, true},
	{"tls-http1-unary", false, true, false},
	{"tls-http1-stream", false, true, true},
	{"tls-h2-unary", true, true, false},
	{"tls-h2-stream", true, true, true},
}

// inflightRow is what one mode and count measured.
type inflightRow struct {
	mode  inflightMode
	calls int // offered at once
	held  int // in flight upstream when sampled

	baseRSS, rss int64   // detour's RSS idle (after one call) and with the calls held
	baseGor, gor float64 // detour's goroutines, likewise
	heap, stack  float64 // heap and goroutine stacks in use with the calls held, bytes
	sockets      int     // detour's TCP connections to the upstream with the calls held
	opened       uint64  // connections the upstream accepted from the launch on
	cpu          float64 // cores detour used while the calls were held
	failed       int
	codes        string
}

// perCall is what one call in flight adds: RSS KiB, goroutines, sockets.
func (r inflightRow) perCall() (kib, gor, sockets float64) {
	if r.held == 0 {
		return 0, 0, 0
	}
	n := float64(r.held)
	return float64(r.rss-r.baseRSS) / 1024 / n, (r.gor - r.baseGor) / n, float64(r.sockets) / n
}

func (s *inflight) flags(fs *flag.FlagSet) {
	fs.DurationVar(&s.hold, "hold", 10*time.Second, "how long the upstream takes to answer a unary call; streams last about as long, a token a second")
	fs.DurationVar(&s.window, "window", 2*time.Second, "once every call is in flight: how long detour's CPU is read while they wait")
	fs.StringVar(&s.countsFlag, "counts", "1000,4000,10000", "comma-separated numbers of calls held in flight at once")
	fs.StringVar(&s.modesFlag, "modes", "http1-unary,http1-stream,h2c-unary,h2c-stream", "comma-separated modes: upstream protocol (http1, h2c, tls-http1, tls-h2: HTTPS, HTTP/2 through ALPN) and call kind (unary, stream)")
	fs.IntVar(&s.callsPerConn, "calls-per-conn", 500, "calls per client gRPC connection (detour allows 1024 streams on one)")
	fs.IntVar(&s.maxConns, "max-conns", 0, "the backend's connections.max_conns, 0 = no cap")
	fs.IntVar(&s.maxStreamsUp, "upstream-max-streams", 0, "fakellm's HTTP/2 streams per connection, 0 = net/http's default (250)")
	fs.StringVar(&s.detourEnv, "detour-env", "", "comma-separated KEY=VALUE added to detour's environment (GOGC=50,GOMEMLIMIT=400MiB)")
	fs.StringVar(&s.pprofDir, "pprof", "", "run detour with --pprof (and a heap sample per KiB allocated, which costs CPU) and save its heap and goroutine profiles with the calls held into this `dir`")
	fs.Float64Var(&s.maxKiB, "max-kib", 16, "HTTP/2 target: RSS KiB per call in flight")
	fs.Float64Var(&s.maxGor, "max-goroutines", 1.5, "HTTP/2 target: goroutines per call in flight")
	fs.Float64Var(&s.sockPer, "calls-per-socket", 100, "HTTP/2 target: at least this many calls in flight per upstream connection")
	fs.Float64Var(&s.h1MaxKiB, "http1-max-kib", 0, "HTTP/1.1 target: RSS KiB per call in flight, no worse than before HTTP/2 (0: not judged)")
	fs.Float64Var(&s.h1MaxGor, "http1-max-goroutines", 0, "HTTP/1.1 target: goroutines per call in flight (0: not judged)")
}

func (s *inflight) setup(context.Context) (func(), error) {
	for _, f := range strings.Split(s.countsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("--counts: %q is not a count in 1..100000", f)
		}
		s.counts = append(s.counts, n)
	}
	for _, f := range strings.Split(s.modesFlag, ",") {
		i := -1
		for j, m := range inflightModes {
			if m.name == strings.TrimSpace(f) {
				i = j
			}
		}
		if i < 0 {
			return nil, fmt.Errorf("--modes: unknown mode %q (http1, h2c, tls-http1 or tls-h2, then -unary or -stream)", f)
		}
		s.modes = append(s.modes, inflightModes[i])
	}
	switch {
	case s.hold < 2*time.Second:
		return nil, fmt.Errorf("--hold %v: at least 2s, to get every call in flight before the first ends", s.hold)
	case s.window <= 0:
		return nil, errors.New("--window must be > 0")
	case s.callsPerConn < 1 || s.callsPerConn > 1024:
		return nil, fmt.Errorf("--calls-per-conn %d must be in 1..1024 (detour's streams per connection)", s.callsPerConn)
	}
	most := 0
	for _, n := range s.counts {
		most = max(most, n)
	}
	// fakellm and detour each hold a socket per call over HTTP/1.1, plus
	// their files; children inherit bench's limit.
	if err := raiseNoFile(uint64(most) + 1024); err != nil {
		return nil, err
	}
	return nil, nil
}

// raiseNoFile raises the open-files limit of bench, and so of the children
// it starts, to at least want, up to the hard limit.
func raiseNoFile(want uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("open files limit: %w", err)
	}
	if rl.Cur >= want {
		return nil
	}
	if rl.Max < want {
		return fmt.Errorf("open files limit: hard limit %d, need %d for the largest --counts (raise it: ulimit -Hn, or fewer calls)", rl.Max, want)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("open files limit: raising to %d: %w", rl.Max, err)
	}
	return nil
}

func (s *inflight) run(ctx context.Context) error {
	mark := harness.MarkCPU()
	for _, m := range s.modes {
		for _, n := range s.counts {
			r, err := s.one(ctx, m, n)
			if err != nil {
				return fmt.Errorf("%s, %d calls: %w", m.name, n, err)
			}
			kib, gor, sock := r.perCall()
			fmt.Fprintf(stderr, "inflight %s %d: held %d, RSS %s -> %s MiB (%.1f KiB/call), heap %.1f MiB, stacks %.1f MiB, goroutines %.0f -> %.0f (%.2f/call), upstream sockets %d (%.3f/call, %d opened), %.3f cores, failed %d\n",
				m.name, n, r.held, report.MiB(r.baseRSS), report.MiB(r.rss), kib, r.heap/(1<<20), r.stack/(1<<20), r.baseGor, r.gor, gor, r.sockets, sock, r.opened, r.cpu, r.failed)
			s.rows = append(s.rows, r)
		}
	}
	s.foreign = mark.ForeignCPU()
	return nil
}

// inflightConfig is one region with one backend on the upstream; the
// adaptive limits off and no max_inflight, so that nothing in detour queues
// or refuses a call; one attempt per call, with room for the hold.
func inflightConfig(endpoint, caFile string, m inflightMode, hold time.Duration, maxConns int) *regions.Config {
	b := regions.Backend{Name: "up", Endpoint: endpoint}
	var c regions.BackendConnections
	switch {
	case m.http2 && !m.tls:
		c.HTTP2 = regions.HTTP2H2C
	case !m.http2 && m.tls:
		c.HTTP2 = regions.HTTP2Off
	}
	c.MaxConns = maxConns
	if c != (regions.BackendConnections{}) {
		// Only when set: main's detour, measured for comparison, has no
		// connections block.
		b.Connections = &c
	}
	// With TLS and http2 left to auto, h2 comes through ALPN.
	if caFile != "" {
		b.TLS = &regions.BackendTLS{CAFile: caFile}
	}
	return &regions.Config{
		Regions:  []regions.Region{region("r", 0, b)},
		Retry:    regions.RetryPolicy{MaxAttempts: 1, AttemptTimeout: regions.Duration(3*hold + time.Minute)},
		Capacity: regions.CapacityPolicy{Disabled: true},
		Limits:   regions.LimitPolicy{DefaultDeadline: regions.Duration(3*hold + 2*time.Minute)},
	}
}

// one measures mode m with n calls held at once, on fresh processes.
func (s *inflight) one(ctx context.Context, m inflightMode, n int) (inflightRow, error) {
	row := inflightRow{mode: m, calls: n}
	var st stack
	defer st.stop()
	fk, err := harness.StartFake(fakellm.Config{Name: "up", Region: "r", H2C: m.http2 && !m.tls, TLS: m.tls, MaxStreams: s.maxStreamsUp}, false)
	if err != nil {
		return row, err
	}
	st.add(fk.Stop)
	_, portText, _ := net.SplitHostPort(fk.HTTP)
	port, _ := strconv.Atoi(portText)
	doc, err := configYAML(inflightConfig(fk.OpenAIEndpoint(), fk.CertFile, m, s.hold, s.maxConns))
	if err != nil {
		return row, err
	}
	var args, env []string
	if s.detourEnv != "" {
		env = strings.Split(s.detourEnv, ",")
	}
	if s.pprofDir != "" {
		// A heap sample every KiB rather than every 512: the profile then
		// sees the few small allocations each call holds.
		args, env = []string{"--pprof"}, append(env, "GODEBUG=memprofilerate=1024")
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "r", Metrics: true, Args: args, Env: env})
	if err != nil {
		return row, err
	}
	st.add(dt.Stop)
	var clients []detourv1.RouterClient
	for range (n + s.callsPerConn - 1) / s.callsPerConn {
		conn, err := st.dial(dt.Addr)
		if err != nil {
			return row, err
		}
		clients = append(clients, detourv1.NewRouterClient(conn))
	}
	timeout := 3*s.hold + time.Minute
	// One call first: detour's pool holds a connection, as on a replica
	// already serving.
	if err := load.Unary(clients[0], load.Request("hello"), 10*time.Second)(ctx); err != nil {
		return row, fmt.Errorf("first call: %w", err)
	}
	req := load.Request("hello, how are you today?")
	call := load.Unary
	patch := map[string]any{"latency": s.hold.String()}
	if m.stream {
		// An answer of about hold tokens: the echo adds four to the words.
		words := max(1, int(s.hold/time.Second)-4)
		req = load.Request(strings.TrimSpace(strings.Repeat("word ", words)))
		call = load.Stream
		patch = map[string]any{"latency": "0s", "tokens_per_sec": 1}
	}
	if err := fk.Control(patch); err != nil {
		return row, err
	}
	if err := fk.ResetStats(); err != nil {
		return row, err
	}
	p := dt.Proc()
	row.baseRSS = p.RSS
	if row.baseGor, _, err = dt.MetricsSample(ctx); err != nil {
		return row, err
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[string]int{}
		first = map[string]string{} // an error of each code, for the record
	)
	for i := range n {
		c := call(clients[i%len(clients)], req, timeout)
		wg.Go(func() {
			if err := c(ctx); err != nil {
				mu.Lock()
				row.failed++
				c := load.CodeName(load.CodeOf(err))
				if codes[c]++; codes[c] == 1 {
					first[c] = err.Error()
				}
				mu.Unlock()
			}
		})
	}
	// Every call in flight upstream, or as many as got there before the
	// first ones could end.
	deadline := time.Now().Add(s.hold * 7 / 10)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		fs, err := fk.Stats()
		if err == nil && fs.InFlight >= int64(n) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let what the launch left behind settle
	fs, err := fk.Stats()
	if err != nil {
		return row, err
	}
	row.held = int(fs.InFlight)
	before := dt.Proc()
	row.rss = before.RSS
	if row.gor, row.heap, err = dt.MetricsSample(ctx); err != nil {
		return row, err
	}
	if row.stack, err = dt.MetricSum(ctx, "go_memstats_stack_inuse_bytes", ""); err != nil {
		return row, err
	}
	if row.sockets, err = harness.Sockets(dt.Pid(), port); err != nil {
		return row, err
	}
	cs, err := fk.ConnStats()
	if err != nil {
		return row, err
	}
	row.opened = cs.Opened // bench's own control connection is kept alive from before the reset
	if s.pprofDir != "" {
		for _, prof := range []string{"heap", "goroutine"} {
			path := filepath.Join(s.pprofDir, fmt.Sprintf("%s-%d-%s.pb.gz", m.name, n, prof))
			if err := savePprof(ctx, "http://"+dt.Metrics+"/debug/pprof/"+prof, path); err != nil {
				return row, err
			}
		}
	}
	time.Sleep(s.window)
	row.cpu = (dt.Proc().CPU - before.CPU).Seconds() / s.window.Seconds()
	wg.Wait()
	var names []string
	for c, k := range codes {
		names = append(names, fmt.Sprintf("%s %d", c, k))
		fmt.Fprintf(stderr, "inflight %s %d: %d calls %s, e.g. %s\n", m.name, n, k, c, first[c])
	}
	row.codes = strings.Join(names, ", ")
	if !dt.Alive() {
		return row, fmt.Errorf("detour exited: %v\n%s", dt.Err(), dt.TailText())
	}
	return row, ctx.Err()
}

// savePprof saves the profile at url to path.
func savePprof(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// inflightTargets are the pass criteria of inflightJudge.
type inflightTargets struct {
	maxKiB, maxGor, callsPerSocket float64 // HTTP/2 modes
	h1MaxKiB, h1MaxGor             float64 // HTTP/1.1 modes, 0: not judged
}

// inflightJudge misses a row whose calls did not all get in flight at once
// or did not all succeed, an HTTP/2 row over maxKiB or maxGor per call or with
// fewer than callsPerSocket calls per upstream connection, and an http1 row
// over its own bounds when set.
func inflightJudge(rows []inflightRow, t inflightTargets) (misses []string, err error) {
	if len(rows) == 0 {
		return nil, errors.New("no run measured anything")
	}
	for _, r := range rows {
		name := fmt.Sprintf("%s %d", r.mode.name, r.calls)
		if r.held < r.calls {
			misses = append(misses, fmt.Sprintf("%s: only %d calls in flight at once", name, r.held))
		}
		if r.failed > 0 {
			misses = append(misses, fmt.Sprintf("%s: %d calls failed (%s)", name, r.failed, r.codes))
		}
		kib, gor, sock := r.perCall()
		maxKiB, maxGor := t.maxKiB, t.maxGor
		if !r.mode.http2 {
			maxKiB, maxGor = t.h1MaxKiB, t.h1MaxGor
		}
		if maxKiB > 0 && kib > maxKiB {
			misses = append(misses, fmt.Sprintf("%s: %.1f KiB per call in flight, over %.1f", name, kib, maxKiB))
		}
		if maxGor > 0 && gor > maxGor {
			misses = append(misses, fmt.Sprintf("%s: %.2f goroutines per call in flight, over %.2f", name, gor, maxGor))
		}
		if r.mode.http2 && r.held > 0 && sock > 1/t.callsPerSocket {
			misses = append(misses, fmt.Sprintf("%s: %d upstream sockets for %d calls, over one per %.0f", name, r.sockets, r.held, t.callsPerSocket))
		}
	}
	return misses, nil
}

func (s *inflight) targets() inflightTargets {
	return inflightTargets{maxKiB: s.maxKiB, maxGor: s.maxGor, callsPerSocket: s.sockPer, h1MaxKiB: s.h1MaxKiB, h1MaxGor: s.h1MaxGor}
}

func (s *inflight) judge() ([]string, error) { return inflightJudge(s.rows, s.targets()) }

func (s *inflight) report(w io.Writer) {
	fmt.Fprintf(w, "### Calls in flight\n\n%s; load %s; other processes used %.2f cores on average; one detour child, one fakellm upstream; unary calls answered after %v, streams a token a second for about as long; detour's CPU read over %v once every call was in flight.\n\n",
		report.Machine(), report.LoadAvg(), s.foreign, s.hold, s.window)
	t := s.targets()
	var rows [][]string
	for _, r := range s.rows {
		kib, gor, sock := r.perCall()
		one, _ := inflightJudge([]inflightRow{r}, t)
		rows = append(rows, []string{r.mode.name, strconv.Itoa(r.calls), strconv.Itoa(r.held),
			report.MiB(r.baseRSS) + " → " + report.MiB(r.rss), fmt.Sprintf("%.1f", kib),
			fmt.Sprintf("%.0f → %.0f", r.baseGor, r.gor), fmt.Sprintf("%.2f", gor),
			strconv.Itoa(r.sockets), strconv.FormatUint(r.opened, 10), fmt.Sprintf("%.3f", sock),
			fmt.Sprintf("%.1f", r.heap/(1<<20)), fmt.Sprintf("%.1f", r.stack/(1<<20)), fmt.Sprintf("%.3f", r.cpu),
			strconv.Itoa(r.failed), report.Verdict(len(one) == 0)})
	}
	fmt.Fprintln(w, report.Table([]string{"mode", "calls", "in flight at once", "RSS MiB idle → held", "KiB/call", "goroutines idle → held", "goroutines/call", "upstream sockets", "upstream connections opened", "sockets/call", "heap in use MiB", "stacks MiB", "CPU cores while held", "failed", "verdict"}, rows))
	fmt.Fprintf(w, "Targets: HTTP/2 ≤ %.0f KiB and ≤ %.1f goroutines per call in flight, at least %.0f calls per upstream socket", t.maxKiB, t.maxGor, t.callsPerSocket)
	if t.h1MaxKiB > 0 || t.h1MaxGor > 0 {
		fmt.Fprintf(w, "; HTTP/1.1 ≤ %.1f KiB and ≤ %.2f goroutines per call", t.h1MaxKiB, t.h1MaxGor)
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintln(w)
}
