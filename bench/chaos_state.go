package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
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

// The state-store cases break what detour keeps its config and its shared
// state in, not the path to the backends: the embedded etcd its config is
// watched in is stopped and restarted, and the redis-server that holds its
// cache tier and fleet state is killed and started again. Both stores are
// off the critical path by design, so the pass criteria are those of the
// baseline (100% success, nothing retried) plus the store being used again
// once it is back, waited for with a deadline: the etcd edit's revision in
// Admin.Status, detour's commands in the new Redis's INFO commandstats.

const (
	// chaosStoreDown is how long a store stays down, shortened when the
	// load is too short to hold it and still see the recovery.
	chaosStoreDown = 3 * time.Second
	// chaosRecoverWithin bounds the wait for detour to use a store again
	// once it is back: a config edit applied, a Redis command sent.
	chaosRecoverWithin = 10 * time.Second
	// chaosRedisP99 is the Redis case's latency bound. detour bounds a
	// cache read in Redis by 20 ms (cache.DefaultRedisTimeout) and a
	// limiter call by 5 ms (fleet.DefaultTimeout), and a dead Redis
	// refuses connections at once; so even a call that pays both
	// timeouts stays near the baseline's ~27 ms plus 25 ms. 100 ms leaves
	// room for a shared 2-core machine, and is far below the 1 s attempt
	// timeout a call would pay if Redis were on the critical path.
	chaosRedisP99 = 100 * time.Millisecond
)

// chaosSkipped is returned by a case's run when the case cannot run here;
// the table says "skipped: " and the reason, and the suite does not fail.
type chaosSkipped string

func (s chaosSkipped) Error() string { return "skipped: " + string(s) }

// chaosStateCases are "etcd restart" and "redis kill". Each case's run
// records what it saw for its judge.
func chaosStateCases() []chaosCase {
	var e etcdOutcome
	var rd redisOutcome
	return []chaosCase{
		{name: "etcd restart", fault: fmt.Sprintf("the etcd holding detour's config (embedded in bench) stopped for %v, restarted on the same port and data, then a weight move applied", chaosStoreDown),
			run: func(ctx context.Context, st *chaosStack, o chaosOpts, _ chaosCase) (*chaosRun, error) {
				return chaosEtcdRestart(ctx, st, o, &e)
			},
			judge: func(o chaosOpts, r *chaosRun) (string, string) { return judgeEtcdRestart(o, r, &e) }},
		{name: "redis kill", fault: fmt.Sprintf("kill -9 of the redis-server holding detour's cache tier and fleet state, down %v, started again on the same port (empty)", chaosStoreDown),
			run: func(ctx context.Context, st *chaosStack, o chaosOpts, _ chaosCase) (*chaosRun, error) {
				return chaosRedisKill(ctx, st, o, &rd)
			},
			judge: func(o chaosOpts, r *chaosRun) (string, string) { return judgeRedisKill(o, r, &rd) }},
	}
}

// storeDown is chaosStoreDown, or less when the load after faultAt is too
// short: the store must be back with 2 s of load left.
func (o chaosOpts) storeDown() time.Duration {
	return max(time.Second, min(chaosStoreDown, o.dur-o.faultAt-2*time.Second))
}

// stateLoad runs one state-store case on a detour already started: an open
// loop at the chaos rate, and fault at faultAt on its own goroutine. fault
// gets the load's context (done when the load ends) and the case's call, so
// that it can keep detour busy while it waits for a recovery after the
// load; it must bound that wait itself.
func stateLoad(ctx context.Context, st *chaosStack, o chaosOpts, dt *harness.Detour, call func(detourv1.RouterClient) load.Call,
	fault func(loadCtx context.Context, call load.Call) error) (*chaosRun, error) {
	conn, err := load.Dial(dt.Addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	fn := call(detourv1.NewRouterClient(conn))
	if err := fn(ctx); err != nil {
		return nil, fmt.Errorf("first call: %w", err)
	}
	before, err := st.upstreamTotals()
	if err != nil {
		return nil, err
	}
	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	faulted := make(chan error, 1)
	go func() {
		select {
		case <-time.After(o.faultAt):
		case <-loadCtx.Done():
			faulted <- nil
			return
		}
		faulted <- fault(loadCtx, fn)
	}()
	r := &chaosRun{detourOK: true}
	r.run = load.OpenLoop(loadCtx, o.rate, o.dur, 20000, nil, fn)
	cancel()
	if err := <-faulted; err != nil {
		return nil, fmt.Errorf("fault: %w", err)
	}
	r.sum = load.Summarize(r.run.Samples, r.run.Elapsed)
	r.baseP99 = load.Summarize(load.Window(r.run.Samples, 0, o.faultAt), 0).P99
	r.afterSum = load.Summarize(load.Window(r.run.Samples, o.faultAt, o.dur), 0)
	r.detourOK = dt.Alive()
	after, err := st.upstreamTotals()
	if err != nil {
		return nil, err
	}
	r.upstream = map[string]fakellm.Stats{}
	for n, a := range after {
		b := before[n]
		d := fakellm.Stats{Total: a.Total - b.Total, OK: a.OK - b.OK, Canceled: a.Canceled - b.Canceled}
		r.upstream[n] = d
		r.upTotal += d.Total
	}
	if n := r.sum.N - r.sum.Codes[load.CodeGenOverload]; n > 0 {
		r.amp = float64(r.upTotal) / float64(n)
	}
	return r, nil
}

// stateJudge is what both cases require: 100% success, nothing retried
// (the fault is not on the path to a backend), detour up.
func stateJudge(r *chaosRun) []string {
	var why []string
	if r.sum.SuccessRate() < 1 {
		why = append(why, "success < 100%")
	}
	if r.amp > 1.01 {
		why = append(why, "amplification > 1.01")
	}
	if !r.detourOK {
		why = append(why, "detour died")
	}
	return why
}

// logSeen records the JSON log lines of a detour child whose msg is one of
// a few, with the time bench read them. The etcd case times two of detour's
// log lines, "etcd connection lost" and "etcd connection back": what is
// measured there is when detour tells its operator, which no Admin or
// metric field says; the pass criterion reads Admin.Status.
type logSeen struct {
	mu    sync.Mutex
	lines []seenLine
	ch    chan struct{} // closed and replaced on each line
}

type seenLine struct {
	at       time.Time
	msg      string
	revision int64
}

func watchLog(c *harness.Child, msgs ...string) *logSeen {
	w := &logSeen{ch: make(chan struct{})}
	c.OnLine(func(line string) bool {
		var l struct {
			Msg      string `json:"msg"`
			Revision int64  `json:"revision"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			return false
		}
		for _, m := range msgs {
			if strings.HasPrefix(l.Msg, m) {
				w.mu.Lock()
				w.lines = append(w.lines, seenLine{at: time.Now(), msg: m, revision: l.Revision})
				close(w.ch)
				w.ch = make(chan struct{})
				w.mu.Unlock()
				break
			}
		}
		return false
	})
	return w
}

// wait returns the first line seen at or after since that ok accepts,
// waiting until deadline.
func (w *logSeen) wait(ctx context.Context, since, deadline time.Time, ok func(seenLine) bool) (seenLine, bool) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		w.mu.Lock()
		ch := w.ch
		for _, l := range w.lines {
			if !l.at.Before(since) && ok(l) {
				w.mu.Unlock()
				return l, true
			}
		}
		w.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return seenLine{}, false
		case <-ctx.Done():
			return seenLine{}, false
		}
	}
}

// etcdOutcome is what the etcd case saw.
type etcdOutcome struct {
	stopped, back  time.Time
	stopAt, backAt time.Duration // since the load's start
	lost           time.Duration // stop -> "etcd connection lost" (-1: not seen)
	reconnected    time.Duration // back -> "etcd connection back" (-1: not seen)
	committed      time.Duration // back -> the edit committed in etcd
	applied        time.Duration // back -> Admin.Status showing the edit's revision
	rev            int64
	failure        string
}

// chaosEtcdRestart: detour serve --etcd-endpoints on an etcd embedded in
// bench, with the chaos config in it. At faultAt etcd stops (its gRPC
// servers first, so open watches are cut as when a member dies), stays down
// storeDown, and restarts with the same data on the same ports; then bench
// applies a weight move as `detourctl config apply` does (validate, read
// the mod revision, compare-and-swap) and waits for detour's Admin.Status to
// show that revision applied (polled every 5 ms).
func chaosEtcdRestart(ctx context.Context, st *chaosStack, o chaosOpts, out *etcdOutcome) (*chaosRun, error) {
	*out = etcdOutcome{lost: -1, reconnected: -1}
	if err := st.reset(ctx); err != nil {
		return nil, err
	}
	etcdSrv, err := devetcd.Start("")
	if err != nil {
		return nil, err
	}
	defer etcdSrv.Close()
	cli, err := etcd.Config{Endpoints: etcdSrv.Endpoints()}.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	store := etcd.NewStore(cli, etcd.Keys{})
	doc, err := configYAML(st.config(o))
	if err != nil {
		return nil, err
	}
	moved, err := editConfig(doc, func(c *regions.Config) error {
		b, err := backendOf(c, "east-b")
		if err != nil {
			return err
		}
		b.Weight = 4 // east-a keeps 1: east-b takes 4/5 of the region
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := store.Put(ctx, []byte(doc), 0); err != nil {
		return nil, err
	}
	dir, err := harness.WorkDir()
	if err != nil {
		return nil, err
	}
	lkg := filepath.Join(dir, fmt.Sprintf("chaos-lkg-%d.yaml", time.Now().UnixNano()))
	dt, err := harness.StartDetour(harness.DetourOptions{Etcd: etcdSrv.Endpoints()[0], LKG: lkg, Region: "east", Metrics: true})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()
	seen := watchLog(dt.Child, "etcd connection lost", "etcd connection back")

	fault := func(_ context.Context, _ load.Call) error {
		stopped := time.Now()
		out.stopped = stopped
		etcdSrv.Stop()
		select {
		case <-time.After(o.storeDown()):
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := etcdSrv.Restart(); err != nil {
			return err
		}
		back := time.Now()
		out.back = back
		deadline := back.Add(chaosRecoverWithin)
		if l, ok := seen.wait(ctx, stopped, stopped, func(l seenLine) bool { return l.msg == "etcd connection lost" }); ok {
			out.lost = l.at.Sub(stopped)
		}
		// Like `detourctl config apply`: read the mod revision, then CAS.
		pctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		cur, err := store.Get(pctx)
		if err == nil {
			out.rev, err = store.Put(pctx, moved, cur.ModRevision)
		}
		if err != nil {
			out.failure = fmt.Sprintf("the edit could not be written within %v of etcd's return: %v", chaosRecoverWithin, err)
			return nil
		}
		out.committed = time.Since(back)
		_, at, err := dt.WaitStatus(ctx, 5*time.Millisecond, deadline, func(st *detourv1.StatusResponse) bool { return st.GetConfigRevision() >= out.rev })
		if err != nil {
			out.failure = fmt.Sprintf("revision %d not applied by detour within %v of etcd's return", out.rev, chaosRecoverWithin)
			return nil
		}
		out.applied = at.Sub(back)
		// The reconnection is logged by another goroutine than the apply.
		if l, ok := seen.wait(ctx, back, at.Add(time.Second), func(l seenLine) bool { return l.msg == "etcd connection back" }); ok {
			out.reconnected = l.at.Sub(back)
		}
		return nil
	}
	call := func(c detourv1.RouterClient) load.Call {
		return load.Unary(c, load.Request("hello, how are you today?"), o.deadline)
	}
	r, err := stateLoad(ctx, st, o, dt, call, fault)
	if err != nil {
		return nil, err
	}
	out.stopAt, out.backAt = out.stopped.Sub(r.run.Began), out.back.Sub(r.run.Began)
	return r, nil
}

// judgeEtcdRestart: 100% success, nothing retried, detour up, and the edit
// made after etcd's return applied within chaosRecoverWithin.
func judgeEtcdRestart(_ chaosOpts, r *chaosRun, e *etcdOutcome) (string, string) {
	why := stateJudge(r)
	if e.stopped.IsZero() {
		why = append(why, "the fault was never injected (the load ended first: --fault-at must be under --duration)")
	}
	if e.failure != "" {
		why = append(why, e.failure)
	}
	seenText := func(d time.Duration) string {
		if d < 0 {
			return "not logged"
		}
		return report.Ms(d) + " ms"
	}
	note := fmt.Sprintf("etcd down t=%.1f-%.1f s; detour logged the connection lost after %s; after etcd's return: connection back %s, edit committed %s ms, edit (revision %d) applied by detour %s ms (limit %v)",
		e.stopAt.Seconds(), e.backAt.Seconds(), seenText(e.lost), seenText(e.reconnected), report.Ms(e.committed), e.rev, report.Ms(e.applied), chaosRecoverWithin)
	return strings.Join(why, "; "), note
}

// redisOutcome is what the Redis case saw.
type redisOutcome struct {
	killed, back   time.Time
	killAt, backAt time.Duration // since the load's start
	before         int64         // detour's Redis commands before the kill
	used           time.Duration // back -> detour's first command on the new Redis
	after, keys    int64         // on the new Redis at the end
	outage         load.Summary  // calls started while Redis was down, and 1 s after
	probes         int           // calls made after the load while waiting (each a new prompt: one upstream request)
	probeFailed    int           // of those, failed
	failure        string
}

// redisDataCmds are the commands detour sends Redis on the path of calls:
// the cache tier's GET and SET, the fleet limiter's lease script. bench
// itself sends none of them (only INFO, and go-redis's HELLO and CLIENT).
var redisDataCmds = []string{"get", "set", "evalsha", "eval"}

func dataCmds(ctx context.Context, r *harness.Redis) (int64, error) {
	cs, err := r.CommandStats(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, c := range redisDataCmds {
		n += cs[c]
	}
	return n, nil
}

// chaosRedisKill: detour serve --redis-addr to a private redis-server, with
// the default cache policy (local tier, then Redis) and a qps cap on every
// backend well above the offered rate, so that every call is booked through
// the fleet limiter without being limited. Every call carries a new prompt
// at temperature 0, so every call looks Redis up on its path and stores its
// answer there. At faultAt Redis gets SIGKILL, stays down storeDown, and a
// new redis-server (empty: no persistence) starts on the same port; bench
// then waits for detour's first cache or limiter command on it.
func chaosRedisKill(ctx context.Context, st *chaosStack, o chaosOpts, out *redisOutcome) (*chaosRun, error) {
	*out = redisOutcome{}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, chaosSkipped("redis-server not found")
	}
	if err := st.reset(ctx); err != nil {
		return nil, err
	}
	rd, err := harness.StartRedis()
	if err != nil {
		return nil, err
	}
	defer func() { rd.Stop() }()
	qps := max(1000, 10*o.rate)
	cfg := st.config(o)
	for i := range cfg.Regions {
		for j := range cfg.Regions[i].Backends {
			cfg.Regions[i].Backends[j].QPS = qps
		}
	}
	doc, err := configYAML(cfg)
	if err != nil {
		return nil, err
	}
	dt, err := harness.StartDetour(harness.DetourOptions{Config: doc, Region: "east", Metrics: true, Args: []string{"--redis-addr=" + rd.Addr}})
	if err != nil {
		return nil, err
	}
	defer dt.Stop()

	fault := func(loadCtx context.Context, call load.Call) error {
		var err error
		if out.before, err = dataCmds(ctx, rd); err != nil {
			return err
		}
		out.killed = time.Now()
		rd.RDB.Close()
		rd.Kill()
		select {
		case <-time.After(o.storeDown()):
		case <-ctx.Done():
			return ctx.Err()
		}
		again, err := harness.StartRedisOn(rd.Addr)
		if err != nil {
			return fmt.Errorf("redis-server again on the same port: %w", err)
		}
		rd = again
		back := time.Now()
		out.back = back
		deadline := back.Add(chaosRecoverWithin)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			n, err := dataCmds(ctx, rd)
			if err == nil && n > 0 {
				out.used = time.Since(back)
				break
			}
			if time.Now().After(deadline) {
				out.failure = fmt.Sprintf("detour sent the restarted Redis nothing within %v", chaosRecoverWithin)
				return nil
			}
			if loadCtx.Err() != nil {
				// The load is over: keep detour calling, or it has
				// nothing to use Redis for.
				out.probes++
				if err := call(ctx); err != nil {
					out.probeFailed++
				}
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	zero := 0.0
	var seq atomic.Uint64
	call := func(c detourv1.RouterClient) load.Call {
		return func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, o.deadline)
			defer cancel()
			_, err := c.Complete(ctx, &detourv1.CompleteRequest{
				Model:       "deepseek-chat",
				Messages:    []*detourv1.Message{{Role: "user", Content: fmt.Sprintf("chaos redis %d: hello, how are you today?", seq.Add(1))}},
				Temperature: &zero,
			})
			return err
		}
	}
	r, err := stateLoad(ctx, st, o, dt, call, fault)
	if err != nil {
		return nil, err
	}
	out.killAt, out.backAt = out.killed.Sub(r.run.Began), out.back.Sub(r.run.Began)
	if n := r.sum.N - r.sum.Codes[load.CodeGenOverload] + out.probes; out.probes > 0 && n > 0 {
		// The upstream totals include the probes' requests: count the
		// probes as client calls too.
		r.amp = float64(r.upTotal) / float64(n)
	}
	out.outage = load.Summarize(load.Window(r.run.Samples, out.killAt, out.backAt+time.Second), 0)
	if out.after, err = dataCmds(ctx, rd); err != nil {
		return nil, err
	}
	if out.keys, err = rd.RDB.DBSize(ctx).Result(); err != nil {
		return nil, err
	}
	return r, nil
}

// judgeRedisKill: 100% success, nothing retried, detour up, p99 within
// chaosRedisP99 over the whole run; detour used Redis before the kill and
// uses the new one within chaosRecoverWithin of its start.
func judgeRedisKill(_ chaosOpts, r *chaosRun, rd *redisOutcome) (string, string) {
	why := stateJudge(r)
	if r.sum.P99 > chaosRedisP99 {
		why = append(why, fmt.Sprintf("p99 %s ms > %s ms", report.Ms(r.sum.P99), report.Ms(chaosRedisP99)))
	}
	if rd.before == 0 {
		why = append(why, "detour sent Redis no cache or limiter command before the kill: nothing was tested")
	}
	if rd.failure != "" {
		why = append(why, rd.failure)
	}
	if rd.probeFailed > 0 {
		why = append(why, fmt.Sprintf("%d calls after the load failed", rd.probeFailed))
	}
	note := fmt.Sprintf("Redis dead t=%.1f-%.1f s; calls from the kill to 1 s after the return: %d, %s OK, p99 %s ms, max %s ms (whole run max %s ms; limit p99 %s ms); detour's cache/limiter commands: %d before the kill, first one on the new Redis %s ms after its start (limit %v), %d by the end, %d keys",
		rd.killAt.Seconds(), rd.backAt.Seconds(), rd.outage.N, report.Percent(rd.outage.SuccessRate()), report.Ms(rd.outage.P99), report.Ms(rd.outage.Max), report.Ms(r.sum.Max), report.Ms(chaosRedisP99),
		rd.before, report.Ms(rd.used), chaosRecoverWithin, rd.after, rd.keys)
	return strings.Join(why, "; "), note
}
