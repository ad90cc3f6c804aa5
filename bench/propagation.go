package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/internal/devetcd"
	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

func init() {
	register("propagation", "time for an etcd config change to be served by every replica (p50/p99 over N edits) under load, and calls failed during the edits", propagation)
}

// propagation runs replicas `detour serve --etcd-endpoints` processes on one
// etcd (embedded in bench) while an open loop of calls spreads over them,
// applies edits to the document as `detourctl config apply` does (validate,
// read the mod revision, compare-and-swap), and times each edit from the
// start of the apply to the moment the last replica logged "config applied"
// for its revision. The log line is written right after the router swapped
// the table, and is timed when bench reads it: an upper bound.
func propagation(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("propagation", flag.ContinueOnError)
	replicas := fs.Int("replicas", 3, "detour processes")
	rate := fs.Float64("rate", 500, "calls per second offered, spread over the replicas")
	edits := fs.Int("edits", 100, "config edits")
	every := fs.Duration("every", 100*time.Millisecond, "pause between one edit being applied everywhere and the next")
	warm := fs.Duration("warmup", 2*time.Second, "load before the first edit")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of one call, and of one edit reaching every replica")
	latency := fs.Duration("latency", 5*time.Millisecond, "fakellm latency")
	target := fs.Duration("target", 100*time.Millisecond, "target p99 propagation")
	if err := fs.Parse(args); err != nil {
		return err
	}

	etcdSrv, err := devetcd.Start("")
	if err != nil {
		return err
	}
	defer etcdSrv.Close()
	cli, err := etcd.Config{Endpoints: etcdSrv.Endpoints()}.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	store := etcd.NewStore(cli, etcd.Keys{})

	var fakes []*fake
	defer func() {
		for _, f := range fakes {
			f.stop()
		}
	}()
	for _, name := range []string{"a-1", "a-2"} {
		f, err := startFake(fakellm.Config{Name: name, Region: "a", Settings: fakellm.Settings{Latency: *latency, Jitter: *latency / 4}}, false)
		if err != nil {
			return err
		}
		fakes = append(fakes, f)
	}
	doc := func(i int) []byte {
		// Each edit moves weight between the two backends: a real change
		// to the routing while calls flow.
		return fmt.Appendf(nil, `regions:
  - name: a
    backends:
      - name: a-1
        endpoint: %s
        weight: %d
      - name: a-2
        endpoint: %s
        weight: %d
`, fakes[0].openaiEndpoint(), 1+i%10, fakes[1].openaiEndpoint(), 10-i%10)
	}
	if _, err := store.Put(ctx, doc(0), 0); err != nil {
		return err
	}

	// applied[r] records, per replica, when bench read its "config applied"
	// line for each revision.
	type applyLog struct {
		mu   sync.Mutex
		at   map[int64]time.Time
		last int64
		ch   chan struct{} // closed and replaced on each line
	}
	logs := make([]*applyLog, *replicas)
	var addrs []string
	dir, err := workDir()
	if err != nil {
		return err
	}
	for r := range *replicas {
		l := &applyLog{at: map[int64]time.Time{}, ch: make(chan struct{})}
		logs[r] = l
		d, err := startEtcdDetour(etcdSrv.Endpoints()[0], filepath.Join(dir, fmt.Sprintf("lkg-%d.yaml", r)), "a")
		if err != nil {
			return err
		}
		defer d.stop()
		d.onLine(func(line string) bool {
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
		addrs = append(addrs, d.addr)
	}
	var calls []callFunc
	for _, a := range addrs {
		conn, err := dial(a)
		if err != nil {
			return err
		}
		defer conn.Close()
		calls = append(calls, unaryCall(detourv1.NewRouterClient(conn), request("hello, how are you today?"), *timeout))
	}
	var next atomic.Int64
	call := func(ctx context.Context) error {
		// Stopping the load stops new calls; calls in flight run to their
		// own deadline.
		return calls[int(next.Add(1))%len(calls)](context.WithoutCancel(ctx))
	}
	for _, c := range calls {
		if err := c(ctx); err != nil {
			return fmt.Errorf("first call: %w", err)
		}
	}

	// waitAll waits until every replica logged rev (or a later revision).
	waitAll := func(rev int64) (time.Time, error) {
		var latest time.Time
		deadline := time.After(*timeout)
		for _, l := range logs {
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
					return latest, fmt.Errorf("revision %d not applied on every replica after %v", rev, *timeout)
				case <-ctx.Done():
					return latest, ctx.Err()
				}
			}
		}
		return latest, nil
	}

	type edit struct {
		all, put  time.Duration // apply start to the last replica; to the write's commit
		perRep    []time.Duration
		editStart time.Duration // since the load began
	}
	var results []edit
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var editErr error
	var began time.Time
	var wg sync.WaitGroup
	dur := *warm + time.Duration(*edits)*(*every+20*time.Millisecond) + 30*time.Second // the loop stops the load when done
	fmt.Fprintf(stderr, "propagation: %d replicas, %.0f calls/s, %d edits...\n", *replicas, *rate, *edits)
	began = time.Now()
	wg.Go(func() {
		defer stopLoad()
		select {
		case <-time.After(*warm):
		case <-loadCtx.Done():
			return
		}
		for i := 1; i <= *edits && loadCtx.Err() == nil; i++ {
			t0 := time.Now()
			// What `detourctl config apply` does: validate, read, CAS.
			d := doc(i)
			if _, err := regions.Load(d); err != nil {
				editErr = err
				return
			}
			cur, err := store.Get(loadCtx)
			if err == nil {
				var rev int64
				rev, err = store.Put(loadCtx, d, cur.ModRevision)
				put := time.Since(t0)
				if err == nil {
					var last time.Time
					if last, err = waitAll(rev); err == nil {
						e := edit{all: last.Sub(t0), put: put, editStart: t0.Sub(began)}
						for _, l := range logs {
							l.mu.Lock()
							e.perRep = append(e.perRep, l.at[rev].Sub(t0))
							l.mu.Unlock()
						}
						results = append(results, e)
					}
				}
			}
			if err != nil {
				editErr = fmt.Errorf("edit %d: %w", i, err)
				return
			}
			select {
			case <-time.After(*every):
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
	r := openLoop(loadCtx, *rate, dur, 2000, nil, call)
	wg.Wait()
	if editErr != nil {
		return editErr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(results) == 0 {
		return fmt.Errorf("no edit was measured")
	}

	// Calls during the edits: started after the first edit began.
	during := window(r.Samples, results[0].editStart, r.Elapsed)
	sum, duringSum := summarize(r.Samples, r.Elapsed), summarize(during, 0)
	quant := func(get func(edit) time.Duration) (p50, p90, p99, mx time.Duration) {
		var v []time.Duration
		for _, e := range results {
			v = append(v, get(e))
		}
		slices.Sort(v)
		return pct(v, 0.5), pct(v, 0.9), pct(v, 0.99), v[len(v)-1]
	}
	fmt.Printf("### Config propagation (etcd)\n\n%s; load %s. %d `detour serve --etcd-endpoints` processes on one etcd (embedded in bench, fsync off), "+
		"two fakellm backends (%v latency); %.0f calls/s offered round-robin over the replicas; %d edits applied like `detourctl config apply` "+
		"(validate, read the mod revision, compare-and-swap), one after the other with %v between them. Each edit moves weight between the two backends. "+
		"Propagation = from the start of the apply to the last replica's \"config applied\" log line as bench reads it (an upper bound).\n\n",
		machine(), loadavg(), *replicas, *latency, *rate, len(results), *every)
	var rows [][]string
	row := func(name string, get func(edit) time.Duration) {
		p50, p90, p99, mx := quant(get)
		rows = append(rows, []string{name, ms(p50), ms(p90), ms(p99), ms(mx)})
	}
	row("**apply -> serving on all replicas**", func(e edit) time.Duration { return e.all })
	row("apply -> etcd commit (read + CAS)", func(e edit) time.Duration { return e.put })
	for i := range *replicas {
		row(fmt.Sprintf("apply -> serving on replica %d", i+1), func(e edit) time.Duration { return e.perRep[i] })
	}
	fmt.Println(mdTable([]string{"edits: " + fmt.Sprint(len(results)), "p50 ms", "p90 ms", "p99 ms", "max ms"}, rows))
	failed := duringSum.N - duringSum.OK
	fmt.Println(mdTable([]string{"calls", "offered", "OK", "failed", "errors", "p50 ms", "p99 ms", "throughput/s"}, [][]string{
		{"whole run", fmt.Sprint(sum.N), fmt.Sprint(sum.OK), fmt.Sprint(sum.N - sum.OK), sum.codesText(), ms(sum.P50), ms(sum.P99), fmt.Sprintf("%.0f", sum.Throughput)},
		{"during the edits", fmt.Sprint(duringSum.N), fmt.Sprint(duringSum.OK), fmt.Sprint(failed), duringSum.codesText(), ms(duringSum.P50), ms(duringSum.P99), ""},
	}))
	_, _, p99, _ := quant(func(e edit) time.Duration { return e.all })
	fmt.Printf("Targets: p99 propagation <= %s ms: %s (%s ms); failed calls during the edits = 0: %s (%d).\n\n",
		ms(*target), verdict(p99 <= *target), ms(p99), verdict(failed == 0), failed)
	var miss []string
	if p99 > *target {
		miss = append(miss, fmt.Sprintf("p99 propagation %s ms > %s ms", ms(p99), ms(*target)))
	}
	if failed > 0 {
		miss = append(miss, fmt.Sprintf("%d calls failed during the edits: %s", failed, duringSum.codesText()))
	}
	if len(miss) > 0 {
		return missed("%s", strings.Join(miss, "; "))
	}
	return nil
}

// startEtcdDetour runs `detour serve` in region reading its config from
// etcd; extra are more serve flags.
func startEtcdDetour(endpoint, lkg, region string, extra ...string) (*detourProc, error) {
	bin, _, err := buildBinaries()
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--etcd-endpoints", endpoint, "--lkg", lkg, "--listen", "127.0.0.1:0", "--region", region}, extra...)
	d := &detourProc{}
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
	c, err := startChild("detour", bin, args, ready, 20*time.Second)
	if err != nil {
		return nil, err
	}
	d.child = c
	return d, nil
}
