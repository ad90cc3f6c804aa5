//go:build ignore

// Ported to the scenario shape of bench/scenario.go in a following commit.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime/pprof"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("http", "the OpenAI-compatible HTTP face: added latency and throughput vs direct and a bare httputil.ReverseProxy, with the gRPC face beside it", httpBench)
	register("revproxy", "(helper for http) serve a bare httputil.ReverseProxy: --listen ADDR --upstream URL", revproxyMain)
}

// httpTarget is one way for an HTTP client to reach fakellm's OpenAI API,
// or (grpc) detour's gRPC face.
type httpTarget struct {
	name string
	call callFunc
	proc *child // the hop's process; nil for direct
}

func httpBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	calls := fs.Int("calls", 10000, "sequential: measured calls per path")
	block := fs.Int("block", 500, "sequential: calls per path before switching to the next (interleaving evens out drift)")
	warm := fs.Int("warmup", 1000, "sequential: unmeasured calls per path first")
	conc := fs.Int("concurrency", 32, "throughput: concurrent callers")
	dur := fs.Duration("duration", 5*time.Second, "throughput: length of each closed-loop run")
	rounds := fs.Int("rounds", 3, "throughput: rounds, each runs every target once (order reversed on odd rounds)")
	maxCalls := fs.Int("max-calls", 2_000_000, "throughput: bound on calls per run")
	target50 := fs.Duration("target-p50", 100*time.Microsecond, "target: HTTP face's added p50")
	target99 := fs.Duration("target-p99", 500*time.Microsecond, "target: HTTP face's added p99")
	grpcTarget := fs.Duration("target-grpc-p50", 150*time.Microsecond, "target: gRPC face's added p50")
	cpuprofile := fs.String("cpuprofile", "", "after the runs, profile detour (its --pprof) under one more closed loop on the HTTP face; the profile goes here, the reverse proxy's to FILE.proxy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fk, err := startFake(fakellm.Config{Name: "http", Region: "local"}, false)
	if err != nil {
		return err
	}
	defer fk.stop()
	px, pxAddr, err := startSelf([]string{"revproxy", "--listen", "127.0.0.1:0", "--upstream", "http://" + fk.http}, "revproxy listening on ", "")
	if err != nil {
		return err
	}
	defer px.stop()
	httpAddr, err := freePort()
	if err != nil {
		return err
	}
	dtArgs := []string{"--http-listen", httpAddr}
	if *cpuprofile != "" {
		dtArgs = append(dtArgs, "--pprof")
	}
	dt, err := startDetour(seqConfig(fk.openaiEndpoint()), "local", true, dtArgs...)
	if err != nil {
		return err
	}
	defer dt.stop()
	conn, err := dial(dt.addr)
	if err != nil {
		return err
	}
	defer conn.Close()

	const prompt = "hello, how are you today?"
	targets := []httpTarget{
		{name: "direct (HTTP client -> fakellm)", call: directHTTP(fk.http, prompt, 5*time.Second)},
		{name: "httputil.ReverseProxy", call: directHTTP(pxAddr, prompt, 5*time.Second), proc: px},
		{name: "detour HTTP face", call: directHTTP(httpAddr, prompt, 5*time.Second), proc: dt.child},
		{name: "detour gRPC face (gRPC client)", call: unaryCall(detourv1.NewRouterClient(conn), request(prompt), 5*time.Second), proc: dt.child},
	}
	const direct, proxy, face, grpcFace = 0, 1, 2, 3
	for _, t := range targets {
		for range *warm {
			if err := t.call(ctx); err != nil {
				return fmt.Errorf("%s warm-up: %w", t.name, err)
			}
		}
	}

	// Sequential: one call at a time, paths interleaved in blocks.
	mark := markCPU()
	seqRes := make([][]sample, len(targets))
	for done := 0; done < *calls && ctx.Err() == nil; done += *block {
		n := min(*block, *calls-done)
		for i, t := range targets {
			r := closedLoop(ctx, 1, time.Hour, n, t.call)
			seqRes[i] = append(seqRes[i], r.Samples...)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	seqForeign := mark.foreignCPU()

	// Throughput: a closed loop of conc callers per target, in rounds.
	tput := make([][]float64, len(targets))
	cpu := make([][]float64, len(targets)) // µs of the hop's CPU per call
	mark = markCPU()
	err = alternate(ctx, *rounds, len(targets), func(round, i int) error {
		t := targets[i]
		closedLoop(ctx, *conc, time.Second, *maxCalls, t.call) // warm
		var p0 procSample
		if t.proc != nil {
			p0 = t.proc.proc()
		}
		r := closedLoop(ctx, *conc, *dur, *maxCalls, t.call)
		s := summarize(r.Samples, r.Elapsed)
		if s.OK != s.N {
			return fmt.Errorf("%s: calls failed under load: %s", t.name, s.codesText())
		}
		tput[i] = append(tput[i], s.Throughput)
		if t.proc != nil && s.OK > 0 {
			cpu[i] = append(cpu[i], float64((t.proc.proc().CPU-p0.CPU).Microseconds())/float64(s.OK))
		}
		fmt.Fprintf(stderr, "http round %d %-32s %8.0f calls/s\n", round+1, t.name, s.Throughput)
		return nil
	})
	if err != nil {
		return err
	}
	loadForeign := mark.foreignCPU()
	rss := dt.proc().HWM

	if *cpuprofile != "" {
		wait := profileDetour(ctx, dt, *dur, *cpuprofile)
		r := closedLoop(ctx, *conc, *dur, *maxCalls, targets[face].call)
		if err := wait(); err != nil {
			return fmt.Errorf("detour profile: %w", err)
		}
		s := summarize(r.Samples, r.Elapsed)
		fmt.Fprintf(stderr, "http: profiled detour's HTTP face: %.0f calls/s; CPU profile in %s (go tool pprof -top %s)\n", s.Throughput, *cpuprofile, *cpuprofile)
		pc, pcAddr, err := startSelf([]string{"revproxy", "--listen", "127.0.0.1:0", "--upstream", "http://" + fk.http, "--cpuprofile", *cpuprofile + ".proxy"}, "revproxy listening on ", "")
		if err != nil {
			return err
		}
		r = closedLoop(ctx, *conc, *dur, *maxCalls, directHTTP(pcAddr, prompt, 5*time.Second))
		pc.stop()
		s = summarize(r.Samples, r.Elapsed)
		fmt.Fprintf(stderr, "http: profiled the reverse proxy: %.0f calls/s; CPU profile in %s.proxy\n", s.Throughput, *cpuprofile)
	}

	fmt.Printf("### HTTP face and gRPC face: added latency and throughput\n\n%s; load %s; other processes used %.2f cores on average during the sequential runs and %.2f during the loaded ones; fakellm HTTP with zero latency; sequential: one call at a time, %d calls per path in blocks of %d, interleaved, after %d warm-up calls each; throughput: %d callers x %v per target, %d rounds, median.\n\n",
		machine(), loadavg(), seqForeign, loadForeign, *calls, *block, *warm, *conc, *dur, *rounds)
	sums := make([]summary, len(targets))
	for i := range targets {
		sums[i] = summarize(seqRes[i], time.Second)
	}
	var rows [][]string
	for i, t := range targets {
		added50, added99 := "-", "-"
		if i != direct {
			added50, added99 = ms(sums[i].P50-sums[direct].P50), ms(sums[i].P99-sums[direct].P99)
		}
		c, r := "-", "-"
		if t.proc != nil {
			c, r = fmt.Sprintf("%.1f", median(cpu[i])), mib(t.proc.proc().HWM)
		}
		rows = append(rows, []string{t.name, ms(sums[i].P50), ms(sums[i].P99), added50, added99,
			fmt.Sprintf("%.0f", median(tput[i])), c, r, sums[i].codesText()})
	}
	fmt.Println(mdTable([]string{"path", "seq p50 ms", "seq p99 ms", "added p50 ms", "added p99 ms",
		fmt.Sprintf("calls/s at %d", *conc), "hop CPU µs/call", "hop RSS peak MiB", "errors"}, rows))

	type check struct {
		what, got, bound string
		ok               bool
	}
	a50, a99 := sums[face].P50-sums[direct].P50, sums[face].P99-sums[direct].P99
	g50 := sums[grpcFace].P50 - sums[direct].P50
	ratio := median(tput[face]) / median(tput[proxy])
	checks := []check{
		{"HTTP face: added p50", ms(a50) + " ms", "<= " + ms(*target50) + " ms", a50 <= *target50},
		{"HTTP face: added p99", ms(a99) + " ms", "<= " + ms(*target99) + " ms", a99 <= *target99},
		{fmt.Sprintf("HTTP face: throughput at %d / reverse proxy's", *conc), fmt.Sprintf("%.2f", ratio), ">= 0.90", ratio >= 0.9},
		{"detour RSS peak", mib(rss) + " MiB", "<= 50 MiB", rss <= 50<<20},
		{"gRPC face: added p50", ms(g50) + " ms", "<= " + ms(*grpcTarget) + " ms", g50 <= *grpcTarget},
	}
	rows = rows[:0]
	var misses []string
	for _, c := range checks {
		v := verdict(c.ok)
		if !c.ok {
			misses = append(misses, c.what)
		}
		rows = append(rows, []string{c.what, c.got, c.bound, v})
	}
	fmt.Printf("Targets:\n\n%s\n", mdTable([]string{"target", "measured", "bound", "verdict"}, rows))
	for i := range targets {
		if sums[i].OK != sums[i].N {
			return missed("%s: calls failed: %s", targets[i].name, sums[i].codesText())
		}
	}
	if len(misses) > 0 {
		return missed("%v", misses)
	}
	return nil
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
