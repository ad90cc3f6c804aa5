package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func init() {
	register("streams", "streams that survive: broken upstream streams and heavy-tailed first tokens, today vs continuation and hedged starts", func() scenario { return &streams{} })
}

// streams drives long streams through detour to three simulated providers
// that break streams mid-way, one of which (the own region's) also has a
// heavy-tailed time to first token, in three modes:
//
//	healthy  no breaks and no tail anywhere: the healthy backends' time to
//	         first token, the reference for hedging
//	today    breaks and the tail; continuation off, no hedged start
//	new      the same; continuation on (prefix completion), hedged start on
//
// Every answer a caller completes is compared with the text the provider
// gives the same prompt unbroken (an in-process fakellm), a spliced one
// included.
type streams struct {
	n, healthyN, tokens, conc  int
	rate                       float64
	tokenInterval              time.Duration
	breakRate, breakClean      float64
	ttft, tail                 time.Duration
	ttftSigma, tailRate        float64
	hedgeAfter, timeout        time.Duration
	maxContinuations, attempts int
	breakerFailures            int
	fakes                      []*harness.Fake
	want                       []streamWant
	runs                       map[string]*streamsRun
	verdicts                   []streamsCheck
	foreign                    float64
}

// streamWant is the unbroken answer to stream i's prompt.
type streamWant struct {
	content                string
	prompt, completionToks int
}

// streamsModes are the modes, in the order they run.
var streamsModes = []string{"healthy", "today", "new"}

// streamsRun is what one mode measured.
type streamsRun struct {
	n, ok     int
	codes     map[codes.Code]int
	ttfts     []time.Duration // sorted: every stream that sent a token
	truncated int             // ended OK without a finish reason
	// Answers compared with the unbroken text: spliced ones (a chunk said
	// continued) and the others.
	spliced, splicedEqual, plainWrong int
	// What the upstreams spent, and what the completed answers needed.
	upstream               fakellm.Usage
	upstreamCalls          uint64
	wantPrompt, wantTokens uint64
	// detour's counters.
	hedgesStarted, hedgesWon, contAttempted, contSucceeded float64
	breakerOpens, capacitySkips, budgetOut                 float64
	elapsed                                                time.Duration
}

// streamsCheck is one target and its verdict.
type streamsCheck struct {
	what, measured, target string
	ok                     bool
}

func (s *streams) flags(fs *flag.FlagSet) {
	fs.IntVar(&s.n, "streams", 2000, "streams per mode (today, new)")
	fs.IntVar(&s.healthyN, "healthy-streams", 1000, "streams of the healthy reference mode")
	fs.IntVar(&s.tokens, "tokens", 200, "tokens per answer")
	fs.Float64Var(&s.rate, "rate", 60, "streams started per second (open loop: a failure does not hurry the next stream)")
	fs.IntVar(&s.conc, "max-in-flight", 256, "bound on streams in flight; at it, the next start waits")
	fs.DurationVar(&s.tokenInterval, "token-interval", 2*time.Millisecond, "upstream pause between two tokens")
	fs.Float64Var(&s.breakRate, "break-rate", 0.3, "share of upstream streams that break mid-way (every upstream)")
	fs.Float64Var(&s.breakClean, "break-clean", 0.5, "share of the breaks that close the stream cleanly rather than drop it")
	fs.DurationVar(&s.ttft, "ttft", 40*time.Millisecond, "median upstream time to first token (every upstream)")
	fs.Float64Var(&s.ttftSigma, "ttft-sigma", 0.5, "log-normal spread of the time to first token")
	fs.Float64Var(&s.tailRate, "tail-rate", 0.1, "share of the own region's upstream streams whose first token waits a heavy-tailed extra time")
	fs.DurationVar(&s.tail, "tail", 300*time.Millisecond, "scale of that extra wait (Pareto, shape 1.5, capped at 100x)")
	fs.DurationVar(&s.hedgeAfter, "hedge-after", 80*time.Millisecond, "new mode: streams.hedge_after")
	fs.IntVar(&s.maxContinuations, "max-continuations", 4, "new mode: streams.max_continuations")
	fs.IntVar(&s.attempts, "max-attempts", 6, "retry.max_attempts (every mode)")
	fs.IntVar(&s.breakerFailures, "breaker-failures", 0, "breaker.consecutive_failures (every mode; 0: detour's default, 5)")
	fs.DurationVar(&s.timeout, "timeout", time.Minute, "deadline of one stream")
}

// The upstreams: the own region's, with the heavy tail, and two without it
// (they break streams as often). All answer as one provider (fakellm region "pool"): the same prompt
// gets the same text from each.
var streamsUpstreams = []struct{ name, region string }{{"slow-a", "a"}, {"ok-b", "b"}, {"ok-c", "c"}}

func (s *streams) setup(ctx context.Context) (func(), error) {
	var st stack
	switch {
	case s.n < 1 || s.healthyN < 1 || s.conc < 1:
		return st.stop, errors.New("--streams, --healthy-streams and --max-in-flight must be >= 1")
	case !(s.rate > 0 && s.rate <= 10000):
		return st.stop, fmt.Errorf("--rate %v: want 0 < rate <= 10000", s.rate)
	case s.tokens < 2 || s.tokens > 100000:
		return st.stop, fmt.Errorf("--tokens %d: want 2..100000 (a stream must have a middle to break in)", s.tokens)
	case s.tokenInterval <= 0:
		return st.stop, errors.New("--token-interval must be > 0")
	}
	for _, u := range streamsUpstreams {
		f, err := harness.StartFake(fakellm.Config{Name: u.name, Region: "pool", Settings: fakellm.Settings{
			TokensPerSec: float64(time.Second) / float64(s.tokenInterval), AnswerTokens: s.tokens, PrefixCompletion: true,
			TTFT: s.ttft, TTFTSigma: s.ttftSigma, TTFTTail: s.tail}}, false)
		if err != nil {
			return st.stop, err
		}
		st.add(f.Stop)
		s.fakes = append(s.fakes, f)
	}

	// The unbroken answers, from an in-process fakellm of the same
	// provider: no latency, no breaks.
	ref := fakellm.New(fakellm.Config{Region: "pool", Settings: fakellm.Settings{AnswerTokens: s.tokens}})
	if err := ref.Start("", "127.0.0.1:0"); err != nil {
		return st.stop, err
	}
	defer ref.Close()
	conn, err := load.Dial(ref.GRPCAddr())
	if err != nil {
		return st.stop, err
	}
	defer conn.Close()
	rc := detourv1.NewRouterClient(conn)
	s.want = make([]streamWant, max(s.n, s.healthyN))
	for i := range s.want {
		r, err := rc.Complete(ctx, streamsRequest(i))
		if err != nil {
			return st.stop, fmt.Errorf("reference answer %d: %w", i, err)
		}
		s.want[i] = streamWant{content: r.GetContent(), prompt: int(r.GetUsage().GetPromptTokens()), completionToks: int(r.GetUsage().GetCompletionTokens())}
	}
	return st.stop, nil
}

// streamsRequest is stream i's request: its own prompt, so that every
// answer is its own text.
func streamsRequest(i int) *detourv1.CompleteRequest {
	return load.Request(fmt.Sprintf("stream %d: tell me a long story about the sea", i))
}

// streamsConfig is detour's config in mode: one backend per region, the
// own region "a" first, all with prefix completion; the new mode continues
// broken streams and hedges slow starts.
func (s *streams) streamsConfig(mode string) *regions.Config {
	cfg := &regions.Config{
		Retry:   regions.RetryPolicy{MaxAttempts: s.attempts},
		Breaker: regions.BreakerPolicy{ConsecutiveFailures: s.breakerFailures},
		Cache:   regions.CachePolicy{Disabled: true},
	}
	for i, u := range streamsUpstreams {
		cfg.Regions = append(cfg.Regions, region(u.region, i, regions.Backend{
			Name: u.name, Endpoint: s.fakes[i].OpenAIEndpoint(), PrefixCompletion: true, MaxConcurrency: 100000}))
	}
	if mode == "new" {
		cfg.Streams = regions.StreamPolicy{Continuation: true, HedgeAfter: regions.Duration(s.hedgeAfter), MaxContinuations: s.maxContinuations}
	}
	return cfg
}

func (s *streams) run(ctx context.Context) error {
	mark := harness.MarkCPU()
	s.runs = map[string]*streamsRun{}
	for _, mode := range streamsModes {
		r, err := s.runMode(ctx, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		s.runs[mode] = r
		fmt.Fprintf(stderr, "streams %-7s %d/%d completed, %d spliced (%d equal), TTFT p50 %s p99 %s ms, hedges %.0f/%.0f, breaker opens %.0f, capacity skips %.0f, budget out %.0f, %.1fs\n",
			mode, r.ok, r.n, r.spliced, r.splicedEqual, report.Ms(load.Pct(r.ttfts, 0.5)), report.Ms(load.Pct(r.ttfts, 0.99)),
			r.hedgesStarted, r.hedgesWon, r.breakerOpens, r.capacitySkips, r.budgetOut, r.elapsed.Seconds())
	}
	s.foreign = mark.ForeignCPU()
	return nil
}

func (s *streams) runMode(ctx context.Context, mode string) (*streamsRun, error) {
	for i, f := range s.fakes {
		patch := map[string]any{"break_rate": s.breakRate, "break_clean": s.breakClean, "ttft_tail_rate": 0.0}
		if mode == "healthy" {
			patch["break_rate"] = 0.0
		} else if i == 0 {
			patch["ttft_tail_rate"] = s.tailRate
		}
		if err := f.Control(patch); err != nil {
			return nil, err
		}
		if err := f.ResetStats(); err != nil {
			return nil, err
		}
	}
	doc, err := configYAML(s.streamsConfig(mode))
	if err != nil {
		return nil, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "a", Metrics: true})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()
	conn, err := load.Dial(dt.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := detourv1.NewRouterClient(conn)

	n := s.n
	if mode == "healthy" {
		n = s.healthyN
	}
	// An open loop: stream i starts at i/rate, so that streams that fail
	// fast (every breaker open, say) do not hurry the next ones, as they
	// would with a fixed number of callers.
	results := make([]streamResult, n)
	slots := make(chan struct{}, s.conc)
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := range n {
		timer.Reset(time.Until(start.Add(time.Duration(float64(i) / s.rate * float64(time.Second)))))
		select {
		case <-timer.C:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		slots <- struct{}{}
		wg.Go(func() {
			results[i] = oneStream(ctx, c, i, s.timeout)
			<-slots
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := &streamsRun{n: n, codes: map[codes.Code]int{}, elapsed: time.Since(start)}
	failures := map[string]int{} // by message, for the log
	for i, res := range results {
		r.codes[res.code]++
		if res.err != nil {
			failures[res.err.Error()]++
		}
		if res.sawToken {
			r.ttfts = append(r.ttfts, res.ttft)
		}
		if res.code != codes.OK {
			continue
		}
		if !res.finished {
			r.truncated++
			continue
		}
		r.ok++
		r.wantPrompt += uint64(s.want[i].prompt)
		r.wantTokens += uint64(s.want[i].completionToks)
		equal := res.text == s.want[i].content
		switch {
		case res.spliced:
			r.spliced++
			if equal {
				r.splicedEqual++
			}
		case !equal:
			r.plainWrong++
		}
	}
	slices.Sort(r.ttfts)
	for msg, k := range failures {
		fmt.Fprintf(stderr, "streams %s: %d failed: %s\n", mode, k, msg)
	}
	// The upstreams are done once every stream ended: a hedge's loser is
	// cancelled before its stream returns.
	for _, f := range s.fakes {
		u, err := f.Usage()
		if err != nil {
			return nil, err
		}
		st, err := f.Stats()
		if err != nil {
			return nil, err
		}
		r.upstream.PromptTokens += u.PromptTokens
		r.upstream.CompletionTokens += u.CompletionTokens
		r.upstreamCalls += st.Total
	}
	for _, m := range []struct {
		dst         *float64
		name, label string
	}{
		{&r.hedgesStarted, "detour_stream_hedges_total", `result="started"`},
		{&r.hedgesWon, "detour_stream_hedges_total", `result="won"`},
		{&r.contAttempted, "detour_stream_continuations_total", `result="attempted"`},
		{&r.contSucceeded, "detour_stream_continuations_total", `result="succeeded"`},
		{&r.breakerOpens, "detour_breaker_transitions_total", `to="open"`},
		{&r.capacitySkips, "detour_limit_rejections_total", `reason="concurrency"`},
		{&r.budgetOut, "detour_retry_budget_exhausted_total", ""},
	} {
		v, err := dt.MetricSum(ctx, m.name, m.label)
		if err != nil {
			return nil, err
		}
		*m.dst = v
	}
	return r, nil
}

// streamResult is what the caller saw of one stream.
type streamResult struct {
	code              codes.Code
	err               error // a failed stream's
	sawToken          bool
	ttft              time.Duration // from the call to its first token
	text              string
	finished, spliced bool
}

// oneStream makes stream i's call and reads it to its end.
func oneStream(ctx context.Context, c detourv1.RouterClient, i int, timeout time.Duration) streamResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var res streamResult
	start := time.Now()
	st, err := c.StreamComplete(ctx, streamsRequest(i))
	if err != nil {
		res.code, res.err = load.CodeOf(err), err
		return res
	}
	var text strings.Builder
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			res.code, res.err = load.CodeOf(err), err
			return res
		}
		if !res.sawToken && ch.GetDelta() != "" {
			res.sawToken, res.ttft = true, time.Since(start)
		}
		text.WriteString(ch.GetDelta())
		res.spliced = res.spliced || ch.GetContinued()
		res.finished = res.finished || ch.GetFinishReason() != ""
	}
	res.code, res.text = codes.OK, text.String()
	return res
}

// completed is the share of streams the caller got whole.
func (r *streamsRun) completed() float64 {
	if r.n == 0 {
		return 0
	}
	return float64(r.ok) / float64(r.n)
}

// extra is the upstream tokens spent beyond what the completed answers
// needed, per completed stream: completion tokens (broken parts a caller
// lost, a hedge's loser) and prompt tokens (the prefixes continuations
// resend, and every failed attempt's prompt).
func (r *streamsRun) extra() (completion, prompt float64) {
	if r.ok == 0 {
		return 0, 0
	}
	return (float64(r.upstream.CompletionTokens) - float64(r.wantTokens)) / float64(r.ok),
		(float64(r.upstream.PromptTokens) - float64(r.wantPrompt)) / float64(r.ok)
}

func (s *streams) judge() ([]string, error) {
	checks, err := judgeStreams(s.runs)
	s.verdicts = checks
	var misses []string
	for _, c := range checks {
		if !c.ok {
			misses = append(misses, fmt.Sprintf("%s: %s (target %s)", c.what, c.measured, c.target))
		}
	}
	return misses, err
}

// judgeStreams checks the targets on what the modes measured: the new mode
// completes >= 99.5% of the streams, its time to first token at p99 is
// within 1.5x the healthy backends', every spliced answer equals the
// unbroken text, and no answer of any mode differs from it otherwise. It
// fails (an error) when the run measured nothing usable: a mode missing or
// empty, a healthy reference that was not fault-free, a new mode that
// spliced nothing.
func judgeStreams(runs map[string]*streamsRun) ([]streamsCheck, error) {
	for _, m := range streamsModes {
		if r := runs[m]; r == nil || r.n == 0 || len(r.ttfts) == 0 {
			return nil, fmt.Errorf("mode %s measured nothing", m)
		}
	}
	h, nw := runs["healthy"], runs["new"]
	if h.ok != h.n {
		return nil, fmt.Errorf("the healthy reference was not fault-free: %d of %d streams completed", h.ok, h.n)
	}
	if nw.spliced == 0 {
		return nil, errors.New("the new mode spliced no stream: nothing broke, or nothing was continued")
	}
	hp99, np99 := load.Pct(h.ttfts, 0.99), load.Pct(nw.ttfts, 0.99)
	wrong := 0
	for _, m := range streamsModes {
		wrong += runs[m].plainWrong
	}
	return []streamsCheck{
		{"new: streams completed for the caller", report.Percent(nw.completed()), ">= 99.5%", nw.completed() >= 0.995},
		{"new: TTFT p99 / healthy p99", fmt.Sprintf("%.2f (%s / %s ms)", float64(np99)/float64(hp99), report.Ms(np99), report.Ms(hp99)), "<= 1.5", float64(np99) <= 1.5*float64(hp99)},
		{"new: spliced answers equal to the unbroken text", fmt.Sprintf("%d of %d", nw.splicedEqual, nw.spliced), "all", nw.splicedEqual == nw.spliced},
		{"every mode: other answers equal to the unbroken text", fmt.Sprintf("%d differ", wrong), "none differ", wrong == 0},
	}, nil
}

func (s *streams) report(w io.Writer) {
	fmt.Fprintf(w, "### Streams that survive\n\n%s; load %s; other processes used %.2f cores on average during the run. "+
		"Three fakellm upstreams over HTTP (kind openai, prefix_completion on), one region each, detour's own region a first; "+
		"answers of %d tokens at one per %v; time to first token log-normal, median %v, sigma %.2g, on every upstream; "+
		"on the own region's (slow-a) also a heavy tail: %.0f%% of its streams wait an extra Pareto(1.5) time from %v (capped at 100x). "+
		"Outside the healthy mode every upstream breaks %.0f%% of its streams after a uniformly random number of chunks (%.0f%% of breaks closed cleanly, the others dropped). "+
		"%.0f streams started per second (open loop, at most %d in flight); %d streams per mode (healthy: %d); retry.max_attempts %d; breaker.consecutive_failures %s; new mode: streams.continuation on, streams.hedge_after %v, streams.max_continuations %d.\n\n",
		report.Machine(), report.LoadAvg(), s.foreign, s.tokens, s.tokenInterval, s.ttft, s.ttftSigma, s.tailRate*100, s.tail,
		s.breakRate*100, s.breakClean*100, s.rate, s.conc, s.n, s.healthyN, s.attempts, breakerText(s.breakerFailures), s.hedgeAfter, s.maxContinuations)
	var rows [][]string
	for _, m := range streamsModes {
		r := s.runs[m]
		if r == nil {
			continue
		}
		ec, ep := r.extra()
		codesText := load.Summary{Codes: r.codes}.CodesText()
		rows = append(rows, []string{m, fmt.Sprintf("%d/%d (%s)", r.ok, r.n, report.Percent(r.completed())), codesText,
			report.Ms(load.Pct(r.ttfts, 0.5)), report.Ms(load.Pct(r.ttfts, 0.99)),
			fmt.Sprintf("%.2f", float64(r.upstreamCalls)/float64(r.n)), fmt.Sprintf("%.1f", ec), fmt.Sprintf("%.1f", ep),
			fmt.Sprintf("%.0f / %.0f", r.hedgesStarted, r.hedgesWon), fmt.Sprintf("%.0f / %.0f", r.contAttempted, r.contSucceeded),
			fmt.Sprintf("%d of %d", r.splicedEqual, r.spliced),
			fmt.Sprintf("%.0f / %.0f / %.0f", r.breakerOpens, r.capacitySkips, r.budgetOut), fmt.Sprintf("%.0f", r.elapsed.Seconds())})
	}
	fmt.Fprintf(w, "%s\n", report.Table([]string{"mode", "completed", "codes", "TTFT p50 ms", "TTFT p99 ms", "upstream calls / stream",
		"extra completion tokens / completed", "extra prompt tokens / completed", "hedges started / won", "continuations attempted / succeeded",
		"spliced = unbroken", "breaker opens / capacity skips / budget out", "s"}, rows))
	fmt.Fprintln(w, "TTFT: from the call to the first content chunk, streams that sent one. Extra tokens: what the upstreams spent (fakellm /usage) beyond the completed answers' own prompt and completion, per completed stream; a failed stream's tokens are all extra. Truncated streams (OK without a finish reason) count as not completed.")
	fmt.Fprintln(w)
	var vrows [][]string
	for _, c := range s.verdicts {
		vrows = append(vrows, []string{c.what, c.measured, c.target, report.Verdict(c.ok)})
	}
	if len(vrows) > 0 {
		fmt.Fprintf(w, "Targets:\n\n%s\n", report.Table([]string{"target", "measured", "bound", "verdict"}, vrows))
	}
}

func breakerText(n int) string {
	if n == 0 {
		return "5 (the default)"
	}
	return fmt.Sprint(n)
}
