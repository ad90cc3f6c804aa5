package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/bench/internal/harness"
	"github.com/detour-dev/detour/bench/internal/load"
	"github.com/detour-dev/detour/bench/internal/report"
	"github.com/detour-dev/detour/internal/devetcd"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

func init() {
	register("propagation", "time for an etcd config change to be served by every replica (p50/p99 over N edits) under load, and calls failed during the edits", func() scenario { return &propagation{} })
}

// propagation runs replicas `detour serve --etcd-endpoints` processes on one
// etcd (embedded in bench) while an open loop of calls spreads over them,
// applies edits to the document as `detourctl config apply` does (validate,
// read the mod revision, compare-and-swap), and times each edit from the
// start of the apply to the moment the last replica logged "config applied"
// for its revision.
//
// bench reads detour's state through Admin.Status and /metrics; here it
// times a log line instead, because the figure is the time of an event: the
// Watcher writes that line right after the router swapped the table, so
// reading it as it comes (an upper bound) times the swap within a fraction
// of a millisecond, where polling Admin.Status would add its interval to a
// figure of a few milliseconds.
type propagation struct {
	replicas, edits      int
	rate                 float64
	every, warm, timeout time.Duration
	latency, target      time.Duration
	store                *etcd.Store
	fakes                []*harness.Fake
	logs                 []*applyLog
	calls                []load.Call

	// What run recorded.
	results []propEdit
	loadRun *load.Run
}

// applyLog records, for one replica, when bench read its "config applied"
// line for each revision.
type applyLog struct {
	mu   sync.Mutex
	at   map[int64]time.Time
	last int64
	ch   chan struct{} // closed and replaced on each line
}

// propEdit is one measured edit.
type propEdit struct {
	all, put  time.Duration // apply start to the last replica; to the write's commit
	perRep    []time.Duration
	editStart time.Duration // since the load began
}

func (p *propagation) flags(fs *flag.FlagSet) {
	fs.IntVar(&p.replicas, "replicas", 3, "detour processes")
	fs.Float64Var(&p.rate, "rate", 500, "calls per second offered, spread over the replicas")
	fs.IntVar(&p.edits, "edits", 100, "config edits")
	fs.DurationVar(&p.every, "every", 100*time.Millisecond, "pause between one edit being applied everywhere and the next")
	fs.DurationVar(&p.warm, "warmup", 2*time.Second, "load before the first edit")
	fs.DurationVar(&p.timeout, "timeout", 5*time.Second, "deadline of one call, and of one edit reaching every replica")
	fs.DurationVar(&p.latency, "latency", 5*time.Millisecond, "fakellm latency")
	fs.DurationVar(&p.target, "target", 100*time.Millisecond, "target p99 propagation")
}

// doc is edit i's document.
func (p *propagation) doc(i int) ([]byte, error) {
	return p.docFor(p.fakes[0].OpenAIEndpoint(), p.fakes[1].OpenAIEndpoint(), i)
}

// docFor is edit i's document for backends at ep1 and ep2: each edit moves
// weight between the two, a real change to the routing while calls flow.
func (p *propagation) docFor(ep1, ep2 string, i int) ([]byte, error) {
	cfg := &regions.Config{Regions: []regions.Region{region("a", 0,
		regions.Backend{Name: "a-1", Endpoint: ep1, Weight: 1 + i%10},
		regions.Backend{Name: "a-2", Endpoint: ep2, Weight: 10 - i%10})}}
	doc, err := configYAML(cfg)
	return []byte(doc), err
}

func (p *propagation) setup(ctx context.Context) (func(), error) {
	var st stack
	etcdSrv, err := devetcd.Start("")
	if err != nil {
		return st.stop, err
	}
	st.add(func() { etcdSrv.Close() })
	cli, err := etcd.Config{Endpoints: etcdSrv.Endpoints()}.Client()
	if err != nil {
		return st.stop, err
	}
	st.add(func() { cli.Close() })
	p.store = etcd.NewStore(cli, etcd.Keys{})
	for _, name := range []string{"a-1", "a-2"} {
		f, err := harness.StartFake(fakellm.Config{Name: name, Region: "a", Settings: fakellm.Settings{Latency: p.latency, Jitter: p.latency / 4}}, false)
		if err != nil {
			return st.stop, err
		}
		st.add(f.Stop)
		p.fakes = append(p.fakes, f)
	}
	first, err := p.doc(0)
	if err != nil {
		return st.stop, err
	}
	if _, err := p.store.Put(ctx, first, 0); err != nil {
		return st.stop, err
	}
	dir, err := harness.WorkDir()
	if err != nil {
		return st.stop, err
	}
	for r := range p.replicas {
		l := &applyLog{at: map[int64]time.Time{}, ch: make(chan struct{})}
		p.logs = append(p.logs, l)
		d, err := harness.StartDetour(harness.DetourOptions{Etcd: etcdSrv.Endpoints()[0], LKG: filepath.Join(dir, fmt.Sprintf("lkg-%d.yaml", r)), Region: "a"})
		if err != nil {
			return st.stop, err
		}
		st.add(d.Stop)
		d.OnLine(func(line string) bool {
			if !strings.Contains(line, `"config applied"`) {
				return false
			}
			now := time.Now()
			var v struct {
				Revision int64 `json:"revision"`
			}
			if json.Unmarshal([]byte(line), &v) != nil {
				return false
			}
			l.mu.Lock()
			l.at[v.Revision] = now
			l.last = max(l.last, v.Revision)
			close(l.ch)
			l.ch = make(chan struct{})
			l.mu.Unlock()
			return false
		})
		conn, err := st.dial(d.Addr)
		if err != nil {
			return st.stop, err
		}
		p.calls = append(p.calls, load.Unary(detourv1.NewRouterClient(conn), load.Request("hello, how are you today?"), p.timeout))
	}
	for _, c := range p.calls {
		if err := c(ctx); err != nil {
			return st.stop, fmt.Errorf("first call: %w", err)
		}
	}
	return st.stop, nil
}

// waitAll waits until every replica logged rev (or a later revision) and
// returns when the last one did.
func (p *propagation) waitAll(ctx context.Context, rev int64) (time.Time, error) {
	var latest time.Time
	deadline := time.After(p.timeout)
	for _, l := range p.logs {
		for {
			l.mu.Lock()
			last, ch := l.last, l.ch
			at, ok := l.at[rev]
			l.mu.Unlock()
			if last >= rev {
				if !ok {
					return latest, fmt.Errorf("a replica skipped revision %d", rev)
				}
				if at.After(latest) {
					latest = at
				}
				break
			}
			select {
			case <-ch:
			case <-deadline:
				return latest, fmt.Errorf("revision %d not applied on every replica after %v", rev, p.timeout)
			case <-ctx.Done():
				return latest, ctx.Err()
			}
		}
	}
	return latest, nil
}

func (p *propagation) run(ctx context.Context) error {
	var next atomic.Int64
	call := func(ctx context.Context) error {
		// Stopping the load stops new calls; calls in flight run to their
		// own deadline.
		return p.calls[int(next.Add(1))%len(p.calls)](context.WithoutCancel(ctx))
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var editErr error
	var wg sync.WaitGroup
	dur := p.warm + time.Duration(p.edits)*(p.every+20*time.Millisecond) + 30*time.Second // the loop stops the load when done
	fmt.Fprintf(stderr, "propagation: %d replicas, %.0f calls/s, %d edits...\n", p.replicas, p.rate, p.edits)
	began := time.Now()
	wg.Go(func() {
		defer stopLoad()
		select {
		case <-time.After(p.warm):
		case <-loadCtx.Done():
			return
		}
		for i := 1; i <= p.edits && loadCtx.Err() == nil; i++ {
			t0 := time.Now()
			// What `detourctl config apply` does: validate, read, CAS.
			d, err := p.doc(i)
			if err == nil {
				_, err = regions.Load(d)
			}
			if err != nil {
				editErr = err
				return
			}
			cur, err := p.store.Get(loadCtx)
			if err == nil {
				var rev int64
				rev, err = p.store.Put(loadCtx, d, cur.ModRevision)
				put := time.Since(t0)
				if err == nil {
					var last time.Time
					if last, err = p.waitAll(loadCtx, rev); err == nil {
						e := propEdit{all: last.Sub(t0), put: put, editStart: t0.Sub(began)}
						for _, l := range p.logs {
							l.mu.Lock()
							e.perRep = append(e.perRep, l.at[rev].Sub(t0))
							l.mu.Unlock()
						}
						p.results = append(p.results, e)
					}
				}
			}
			if err != nil {
				editErr = fmt.Errorf("edit %d: %w", i, err)
				return
			}
			select {
			case <-time.After(p.every):
			case <-loadCtx.Done():
			}
		}
		// A little more load after the last edit, so calls in flight
		// during it are counted.
		select {
		case <-time.After(500 * time.Millisecond):
		case <-loadCtx.Done():
		}
	})
	p.loadRun = load.OpenLoop(loadCtx, p.rate, dur, 2000, nil, call)
	wg.Wait()
	if editErr != nil {
		return editErr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(p.results) == 0 {
		return fmt.Errorf("no edit was measured")
	}
	return nil
}

// quantiles are the p50, p90, p99 and max of one figure over the edits.
func propQuantiles(results []propEdit, get func(propEdit) time.Duration) (p50, p90, p99, mx time.Duration) {
	var v []time.Duration
	for _, e := range results {
		v = append(v, get(e))
	}
	slices.Sort(v)
	return load.Pct(v, 0.5), load.Pct(v, 0.9), load.Pct(v, 0.99), v[len(v)-1]
}

// during summarises the calls started after the first edit began.
func (p *propagation) during() load.Summary {
	return load.Summarize(load.Window(p.loadRun.Samples, p.results[0].editStart, p.loadRun.Elapsed), 0)
}

func (p *propagation) judge() ([]string, error) {
	_, _, p99, _ := propQuantiles(p.results, func(e propEdit) time.Duration { return e.all })
	return propagationJudge(p99, p.target, p.during()), nil
}

// propagationJudge: p99 from apply to serving on every replica within
// target, and no call failed during the edits.
func propagationJudge(p99, target time.Duration, during load.Summary) []string {
	var miss []string
	if p99 > target {
		miss = append(miss, fmt.Sprintf("p99 propagation %s ms > %s ms", report.Ms(p99), report.Ms(target)))
	}
	if failed := during.N - during.OK; failed > 0 {
		miss = append(miss, fmt.Sprintf("%d calls failed during the edits: %s", failed, during.CodesText()))
	}
	return miss
}

func (p *propagation) report(w io.Writer) {
	fmt.Fprintf(w, "### Config propagation (etcd)\n\n%s; load %s. %d `detour serve --etcd-endpoints` processes on one etcd (embedded in bench, fsync off), "+
		"two fakellm backends (%v latency); %.0f calls/s offered round-robin over the replicas; %d edits applied like `detourctl config apply` "+
		"(validate, read the mod revision, compare-and-swap), one after the other with %v between them. Each edit moves weight between the two backends. "+
		"Propagation = from the start of the apply to the last replica's \"config applied\" log line as bench reads it (an upper bound).\n\n",
		report.Machine(), report.LoadAvg(), p.replicas, p.latency, p.rate, len(p.results), p.every)
	var rows [][]string
	row := func(name string, get func(propEdit) time.Duration) {
		p50, p90, p99, mx := propQuantiles(p.results, get)
		rows = append(rows, []string{name, report.Ms(p50), report.Ms(p90), report.Ms(p99), report.Ms(mx)})
	}
	row("**apply -> serving on all replicas**", func(e propEdit) time.Duration { return e.all })
	row("apply -> etcd commit (read + CAS)", func(e propEdit) time.Duration { return e.put })
	for i := range p.replicas {
		row(fmt.Sprintf("apply -> serving on replica %d", i+1), func(e propEdit) time.Duration { return e.perRep[i] })
	}
	fmt.Fprintln(w, report.Table([]string{"edits: " + fmt.Sprint(len(p.results)), "p50 ms", "p90 ms", "p99 ms", "max ms"}, rows))
	sum, duringSum := load.Summarize(p.loadRun.Samples, p.loadRun.Elapsed), p.during()
	failed := duringSum.N - duringSum.OK
	fmt.Fprintln(w, report.Table([]string{"calls", "offered", "OK", "failed", "errors", "p50 ms", "p99 ms", "throughput/s"}, [][]string{
		{"whole run", fmt.Sprint(sum.N), fmt.Sprint(sum.OK), fmt.Sprint(sum.N - sum.OK), sum.CodesText(), report.Ms(sum.P50), report.Ms(sum.P99), fmt.Sprintf("%.0f", sum.Throughput)},
		{"during the edits", fmt.Sprint(duringSum.N), fmt.Sprint(duringSum.OK), fmt.Sprint(failed), duringSum.CodesText(), report.Ms(duringSum.P50), report.Ms(duringSum.P99), ""},
	}))
	_, _, p99, _ := propQuantiles(p.results, func(e propEdit) time.Duration { return e.all })
	fmt.Fprintf(w, "Targets: p99 propagation <= %s ms: %s (%s ms); failed calls during the edits = 0: %s (%d).\n\n",
		report.Ms(p.target), report.Verdict(p99 <= p.target), report.Ms(p99), report.Verdict(failed == 0), failed)
}
