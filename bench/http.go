package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime/pprof"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("http", "the OpenAI-compatible HTTP face: added latency and throughput vs direct and a bare httputil.ReverseProxy, with the gRPC face beside it", func() scenario { return &httpFace{} })
	registerHelper("revproxy", "(helper for http) serve a bare httputil.ReverseProxy: --listen ADDR --upstream URL", revproxyMain)
}

// The paths of bench http, in the order of httpFace.targets.
const (
	httpDirect   = iota // HTTP client -> fakellm
	httpProxy           // HTTP client -> httputil.ReverseProxy -> fakellm
	httpFaceT           // HTTP client -> detour's HTTP face -> fakellm
	httpGRPCFace        // gRPC client -> detour's gRPC face -> fakellm
	httpTargets
)

// httpFace measures detour's OpenAI-compatible HTTP face against the same
// HTTP client calling fakellm directly and through a bare
// httputil.ReverseProxy (the floor of an HTTP hop in Go), with detour's gRPC
// face beside them: one call at a time (added latency), then a closed loop
// of concurrent callers (throughput, the hop's CPU per call), and detour's
// peak RSS.
type httpFace struct {
	calls, block, warm     int
	conc, rounds, maxCalls int
	dur                    time.Duration
	bounds                 httpBounds
	cpuprofile             string

	fk      *harness.Fake
	dt      *harness.Detour
	targets []httpTarget

	rec httpRecord
}

// httpTarget is one way for a client to reach fakellm's OpenAI API, or
// (the gRPC face) detour's gRPC API.
type httpTarget struct {
	name string
	call load.Call
	proc *harness.Child // the hop's process; nil for direct
}

// httpBounds are the targets.
type httpBounds struct {
	p50, p99, grpcP50 time.Duration // added over direct, sequential
	ratio             float64       // HTTP face's throughput / the reverse proxy's
	rssMiB            int64         // detour's peak RSS
}

// httpRecord is what run measured, per target in the order of the
// http* constants.
type httpRecord struct {
	names []string
	// seq summarises the sequential calls.
	seq []load.Summary
	// tput is calls/s per round of the closed loop; cpu the hop's CPU per
	// call (µs) per round (none for direct).
	tput, cpu [][]float64
	// hwm is the hop's peak RSS (0 for direct); detourHWM detour's, after
	// the measured runs (before any profile).
	hwm       []int64
	detourHWM int64
	// Cores other processes used during the sequential and loaded runs.
	seqForeign, loadForeign float64
}

func (h *httpFace) flags(fs *flag.FlagSet) {
	fs.IntVar(&h.calls, "calls", 10000, "sequential: measured calls per path")
	fs.IntVar(&h.block, "block", 500, "sequential: calls per path before switching to the next (interleaving evens out drift)")
	fs.IntVar(&h.warm, "warmup", 1000, "sequential: unmeasured calls per path first")
	fs.IntVar(&h.conc, "concurrency", 32, "throughput: concurrent callers")
	fs.DurationVar(&h.dur, "duration", 5*time.Second, "throughput: length of each closed-loop run")
	fs.IntVar(&h.rounds, "rounds", 3, "throughput: rounds, each runs every path once (order reversed on odd rounds)")
	fs.IntVar(&h.maxCalls, "max-calls", 2_000_000, "throughput: bound on calls per run")
	fs.DurationVar(&h.bounds.p50, "target-p50", 100*time.Microsecond, "target: the HTTP face's added p50")
	fs.DurationVar(&h.bounds.p99, "target-p99", 500*time.Microsecond, "target: the HTTP face's added p99")
	fs.DurationVar(&h.bounds.grpcP50, "target-grpc-p50", 150*time.Microsecond, "target: the gRPC face's added p50")
	fs.Float64Var(&h.bounds.ratio, "target-ratio", 0.9, "target: the HTTP face's throughput at least this share of the reverse proxy's")
	fs.Int64Var(&h.bounds.rssMiB, "target-rss", 50, "target: detour's peak RSS in MiB")
	fs.StringVar(&h.cpuprofile, "cpuprofile", "", "after the runs, profile detour (its --pprof) under one more closed loop on the HTTP face; the profile goes here, the reverse proxy's to FILE.proxy")
}

func (h *httpFace) setup(ctx context.Context) (func(), error) {
	var st stack
	if h.calls <= 0 || h.block <= 0 || h.conc <= 0 || h.rounds <= 0 || h.dur <= 0 {
		return st.stop, errors.New("--calls, --block, --concurrency, --rounds and --duration must be positive")
	}
	fk, err := harness.StartFake(fakellm.Config{Name: "http", Region: "local"}, false)
	if err != nil {
		return st.stop, err
	}
	st.add(fk.Stop)
	h.fk = fk
	px, pxAddr, err := startRevproxy("http://"+fk.HTTP, "")
	if err != nil {
		return st.stop, err
	}
	st.add(px.Stop)
	httpAddr, err := harness.FreePort()
	if err != nil {
		return st.stop, err
	}
	args := []string{"--http-listen", httpAddr}
	if h.cpuprofile != "" {
		args = append(args, "--pprof")
	}
	doc, err := configYAML(seqConfig(fk.OpenAIEndpoint()))
	if err != nil {
		return st.stop, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "local", Metrics: true, Args: args})
	if err != nil {
		return st.stop, err
	}
	st.add(dt.Stop)
	h.dt = dt
	conn, err := st.dial(dt.Addr)
	if err != nil {
		return st.stop, err
	}
	const prompt = "hello, how are you today?"
	h.targets = make([]httpTarget, httpTargets)
	h.targets[httpDirect] = httpTarget{name: "direct (HTTP client -> fakellm)", call: load.DirectHTTP(fk.HTTP, prompt, 5*time.Second)}
	h.targets[httpProxy] = httpTarget{name: "httputil.ReverseProxy", call: load.DirectHTTP(pxAddr, prompt, 5*time.Second), proc: px}
	h.targets[httpFaceT] = httpTarget{name: "detour HTTP face", call: load.DirectHTTP(httpAddr, prompt, 5*time.Second), proc: dt.Child}
	h.targets[httpGRPCFace] = httpTarget{name: "detour gRPC face (gRPC client)", call: load.Unary(detourv1.NewRouterClient(conn), load.Request(prompt), 5*time.Second), proc: dt.Child}
	// Every path must answer before anything is measured.
	for _, t := range h.targets {
		if err := t.call(ctx); err != nil {
			return st.stop, fmt.Errorf("%s: first call: %w", t.name, err)
		}
	}
	return st.stop, nil
}

func (h *httpFace) run(ctx context.Context) error {
	rec := &h.rec
	for _, t := range h.targets {
		rec.names = append(rec.names, t.name)
		for range h.warm {
			if err := t.call(ctx); err != nil {
				return fmt.Errorf("%s warm-up: %w", t.name, err)
			}
		}
	}

	// Sequential: one call at a time, paths interleaved in blocks.
	mark := harness.MarkCPU()
	seq := make([][]load.Sample, len(h.targets))
	for done := 0; done < h.calls && ctx.Err() == nil; done += h.block {
		n := min(h.block, h.calls-done)
		for i, t := range h.targets {
			r := load.ClosedLoop(ctx, 1, time.Hour, n, t.call)
			seq[i] = append(seq[i], r.Samples...)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rec.seqForeign = mark.ForeignCPU()
	for i := range seq {
		rec.seq = append(rec.seq, load.Summarize(seq[i], 0))
	}

	// Throughput: a closed loop of conc callers per path, in rounds.
	rec.tput = make([][]float64, len(h.targets))
	rec.cpu = make([][]float64, len(h.targets))
	mark = harness.MarkCPU()
	err := load.Alternate(ctx, h.rounds, len(h.targets), func(round, i int) error {
		t := h.targets[i]
		load.ClosedLoop(ctx, h.conc, time.Second, h.maxCalls, t.call) // warm
		var p0 harness.ProcSample
		if t.proc != nil {
			p0 = t.proc.Proc()
		}
		r := load.ClosedLoop(ctx, h.conc, h.dur, h.maxCalls, t.call)
		s := load.Summarize(r.Samples, r.Elapsed)
		if s.OK != s.N {
			return fmt.Errorf("%s: calls failed under load: %s", t.name, s.CodesText())
		}
		rec.tput[i] = append(rec.tput[i], s.Throughput)
		if t.proc != nil && s.OK > 0 {
			rec.cpu[i] = append(rec.cpu[i], float64((t.proc.Proc().CPU-p0.CPU).Microseconds())/float64(s.OK))
		}
		fmt.Fprintf(stderr, "http round %d %-32s %8.0f calls/s\n", round+1, t.name, s.Throughput)
		return nil
	})
	if err != nil {
		return err
	}
	rec.loadForeign = mark.ForeignCPU()
	for _, t := range h.targets {
		var hwm int64
		if t.proc != nil {
			hwm = t.proc.Proc().HWM
		}
		rec.hwm = append(rec.hwm, hwm)
	}
	rec.detourHWM = h.dt.Proc().HWM

	if h.cpuprofile != "" {
		if err := h.profile(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// profile profiles detour under one more closed loop on its HTTP face,
// then a fresh reverse proxy (writing its own profile) under the same.
func (h *httpFace) profile(ctx context.Context) error {
	wait := profileDetour(ctx, h.dt, h.dur, h.cpuprofile)
	r := load.ClosedLoop(ctx, h.conc, h.dur, h.maxCalls, h.targets[httpFaceT].call)
	if err := wait(); err != nil {
		return fmt.Errorf("detour profile: %w", err)
	}
	s := load.Summarize(r.Samples, r.Elapsed)
	fmt.Fprintf(stderr, "http: profiled detour's HTTP face: %.0f calls/s (%s); CPU profile in %s (go tool pprof -top %s)\n", s.Throughput, s.CodesText(), h.cpuprofile, h.cpuprofile)
	pc, addr, err := startRevproxy("http://"+h.fk.HTTP, h.cpuprofile+".proxy")
	if err != nil {
		return err
	}
	defer pc.Stop()
	r = load.ClosedLoop(ctx, h.conc, h.dur, h.maxCalls, load.DirectHTTP(addr, "hello, how are you today?", 5*time.Second))
	pc.Stop() // writes its profile
	s = load.Summarize(r.Samples, r.Elapsed)
	fmt.Fprintf(stderr, "http: profiled the reverse proxy: %.0f calls/s (%s); CPU profile in %s.proxy\n", s.Throughput, s.CodesText(), h.cpuprofile)
	return nil
}

func (h *httpFace) judge() ([]string, error) {
	_, misses, err := httpJudge(h.rec, h.bounds)
	return misses, err
}

// httpCheck is one target: what was measured, its bound, whether it held.
type httpCheck struct {
	what, got, bound string
	ok               bool
}

// httpJudge holds rec to the bounds: the checks for the report, and the
// misses (failed sequential calls are one). It is an error when rec has no
// sequential calls or no throughput rounds for every path.
func httpJudge(rec httpRecord, b httpBounds) ([]httpCheck, []string, error) {
	if len(rec.seq) != httpTargets || len(rec.tput) != httpTargets {
		return nil, nil, fmt.Errorf("measured %d of %d paths", min(len(rec.seq), len(rec.tput)), httpTargets)
	}
	for i := range httpTargets {
		if rec.seq[i].N == 0 || len(rec.tput[i]) == 0 {
			return nil, nil, fmt.Errorf("%s: nothing measured", rec.name(i))
		}
	}
	seq := rec.seq
	a50, a99 := seq[httpFaceT].P50-seq[httpDirect].P50, seq[httpFaceT].P99-seq[httpDirect].P99
	g50 := seq[httpGRPCFace].P50 - seq[httpDirect].P50
	ratio := load.Median(rec.tput[httpFaceT]) / load.Median(rec.tput[httpProxy])
	checks := []httpCheck{
		{"HTTP face: added p50", report.Ms(a50) + " ms", "<= " + report.Ms(b.p50) + " ms", a50 <= b.p50},
		{"HTTP face: added p99", report.Ms(a99) + " ms", "<= " + report.Ms(b.p99) + " ms", a99 <= b.p99},
		{"HTTP face: throughput / reverse proxy's", fmt.Sprintf("%.2f", ratio), fmt.Sprintf(">= %.2f", b.ratio), ratio >= b.ratio},
		{"detour RSS peak", report.MiB(rec.detourHWM) + " MiB", fmt.Sprintf("<= %d MiB", b.rssMiB), rec.detourHWM <= b.rssMiB<<20},
		{"gRPC face: added p50", report.Ms(g50) + " ms", "<= " + report.Ms(b.grpcP50) + " ms", g50 <= b.grpcP50},
	}
	var misses []string
	for i, s := range seq {
		if s.OK != s.N {
			misses = append(misses, fmt.Sprintf("%s: sequential calls failed: %s", rec.name(i), s.CodesText()))
		}
	}
	for _, c := range checks {
		if !c.ok {
			misses = append(misses, fmt.Sprintf("%s %s, want %s", c.what, c.got, c.bound))
		}
	}
	return checks, misses, nil
}

// name is path i's name in the report.
func (rec httpRecord) name(i int) string {
	if i < len(rec.names) {
		return rec.names[i]
	}
	return fmt.Sprintf("path %d", i)
}

func (h *httpFace) report(w io.Writer) {
	rec := h.rec
	fmt.Fprintf(w, "### HTTP face and gRPC face: added latency and throughput\n\n%s; load %s; other processes used %.2f cores on average during the sequential runs and %.2f during the loaded ones; "+
		"fakellm HTTP with zero latency; sequential: one call at a time, %d calls per path in blocks of %d, interleaved, after %d warm-up calls each; "+
		"throughput: %d callers x %v per path, %d rounds, median.\n\n",
		report.Machine(), report.LoadAvg(), rec.seqForeign, rec.loadForeign, h.calls, h.block, h.warm, h.conc, h.dur, h.rounds)
	fmt.Fprintln(w, httpTable(rec, h.conc))
	checks, _, err := httpJudge(rec, h.bounds)
	if err != nil {
		fmt.Fprintf(w, "No verdict: %v.\n\n", err)
		return
	}
	var rows [][]string
	for _, c := range checks {
		rows = append(rows, []string{c.what, c.got, c.bound, report.Verdict(c.ok)})
	}
	fmt.Fprintf(w, "Targets:\n\n%s\n", report.Table([]string{"target", "measured", "bound", "verdict"}, rows))
}

// httpTable is the paths' table: sequential latency and what each hop
// added over direct, throughput, the hop's CPU per call and peak RSS.
func httpTable(rec httpRecord, conc int) string {
	var rows [][]string
	for i, s := range rec.seq {
		added50, added99 := "-", "-"
		if i != httpDirect && len(rec.seq) > httpDirect {
			d := rec.seq[httpDirect]
			added50, added99 = report.Ms(s.P50-d.P50), report.Ms(s.P99-d.P99)
		}
		tput, cpu, rss := "-", "-", "-"
		if i < len(rec.tput) && len(rec.tput[i]) > 0 {
			tput = fmt.Sprintf("%.0f", load.Median(rec.tput[i]))
		}
		if i < len(rec.cpu) && len(rec.cpu[i]) > 0 {
			cpu = fmt.Sprintf("%.1f", load.Median(rec.cpu[i]))
		}
		if i < len(rec.hwm) && rec.hwm[i] > 0 {
			rss = report.MiB(rec.hwm[i])
		}
		rows = append(rows, []string{rec.name(i), report.Ms(s.P50), report.Ms(s.P99), added50, added99, tput, cpu, rss, s.CodesText()})
	}
	return report.Table([]string{"path", "seq p50 ms", "seq p99 ms", "added p50 ms", "added p99 ms",
		fmt.Sprintf("calls/s at %d", conc), "hop CPU µs/call", "hop RSS peak MiB", "errors"}, rows)
}

// startRevproxy runs this bench binary's revproxy helper as a child in
// front of upstream (a base URL), writing a CPU profile to profile when
// set.
func startRevproxy(upstream, profile string) (*harness.Child, string, error) {
	args := []string{"revproxy", "--listen", "127.0.0.1:0", "--upstream", upstream}
	if profile != "" {
		args = append(args, "--cpuprofile", profile)
	}
	return harness.StartSelf(args, "revproxy listening on ", "")
}

// revproxyMain serves a bare httputil.ReverseProxy in front of one
// upstream: no parsing, no policy, the floor of an HTTP hop in Go.
func revproxyMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("revproxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := fs.String("upstream", "", "base URL of the upstream, e.g. http://127.0.0.1:8081")
	profile := fs.String("cpuprofile", "", "write a CPU profile here until the proxy stops")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*upstream)
	if err != nil || u.Host == "" {
		return fmt.Errorf("--upstream %q: want a URL such as http://127.0.0.1:8081", *upstream)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("revproxy listening on %s\n", lis.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
