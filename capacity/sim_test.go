package capacity

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// simBackend is a model of an overloaded provider: a rate cap answered 429
// (GCRA with a burst of a tenth of a second), a concurrency cap answered 503,
// and a random share of 503s, in that order, as fakellm decides.
type simBackend struct {
	busyRate     float64
	maxConc      int
	qps          float64
	lat, jitter  time.Duration
	inflight     int
	tat          time.Time
	rng          *rand.Rand
	total, busys int
	random       int // busy answers drawn at random, not from a cap
}

type answer struct {
	busy bool
	dur  time.Duration
}

func (b *simBackend) admit(now time.Time) answer {
	b.total++
	if b.qps > 0 {
		interval := time.Duration(float64(time.Second) / b.qps)
		burst := time.Duration(max(1, b.qps/10)) * interval
		tat := b.tat
		if tat.Before(now) {
			tat = now
		}
		if tat.Add(interval).Sub(now) > burst {
			b.busys++
			return answer{busy: true, dur: time.Millisecond}
		}
		b.tat = tat.Add(interval)
	}
	if b.maxConc > 0 && b.inflight >= b.maxConc {
		b.busys++
		return answer{busy: true, dur: time.Millisecond}
	}
	if b.busyRate > 0 && b.rng.Float64() < b.busyRate {
		b.busys++
		b.random++
		return answer{busy: true, dur: time.Millisecond}
	}
	d := b.lat
	if b.jitter > 0 {
		d += time.Duration(b.rng.Int64N(int64(2*b.jitter)+1)) - b.jitter
	}
	b.inflight++
	return answer{dur: d}
}

// simConfig is one simulated run: a sole backend under open-loop load, the
// client side making up to attempts attempts with the router's backoff,
// waiting up to maxWait for a slot.
type simConfig struct {
	rate     float64
	dur      time.Duration
	attempts int
	maxWait  time.Duration
	backend  simBackend
	// change, when set, runs once at changeAt (e.g. the backend turns busy),
	// or at changeFrac of the run.
	changeAt   time.Duration
	changeFrac float64
	change     func(b *simBackend)
}

type simResult struct {
	calls, ok, refused, upstream, busy int
	randomBusy                         int
	upstream2, excess2                 int       // second half: upstream calls, busy answers from a cap
	limits                             []float64 // every second
	goodput                            float64   // answers per second over the second half
	p99                                time.Duration
	stats                              Stats
}

func (r simResult) String() string {
	return fmt.Sprintf("calls %d ok %.2f%% refused %d upstream/call %.2f busy/upstream %.1f%% goodput(2nd half) %.0f/s p99 %v limits %v final %+v",
		r.calls, 100*float64(r.ok)/float64(r.calls), r.refused, float64(r.upstream)/float64(r.calls),
		100*float64(r.busy)/float64(max(r.upstream, 1)), r.goodput, r.p99, fmtLimits(r.limits), r.stats)
}

func fmtLimits(ls []float64) string {
	s := ""
	for i, l := range ls {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%.0f", l)
	}
	return s
}

type simCall struct {
	start    time.Time
	attempts int
	queuedAt time.Time
}

type simEvent struct {
	at     time.Time
	call   *simCall
	permit *Permit
	ans    answer
	retry  bool
}

func simulate(t testing.TB, cfg simConfig, s Settings, seed uint64) simResult {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := newManualClock(t0)
	l := New(s, WithClock(clk))
	if *simTrace {
		l.est.trace = func(f string, a ...any) { t.Logf("%v "+f, append([]any{clk.Now().Sub(t0)}, a...)...) }
	}
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := cfg.backend
	b.rng = rng
	var res simResult
	var queue []*simCall
	var events []simEvent // unordered; scanned each tick (small)
	var lats []time.Duration
	arrivalEvery := time.Duration(float64(time.Second) / cfg.rate)
	nextArrival := t0
	end := t0.Add(cfg.dur)
	half := t0.Add(cfg.dur / 2)
	okSecondHalf := 0
	nextSample := t0.Add(time.Second)
	changed := false
	send := func(now time.Time, c *simCall, p *Permit) {
		c.attempts++
		res.upstream++
		random := b.random
		a := b.admit(now)
		if a.busy {
			res.busy++
		}
		if !now.Before(half) {
			res.upstream2++
			if a.busy && b.random == random {
				res.excess2++
			}
		}
		events = append(events, simEvent{at: now.Add(a.dur), call: c, permit: p, ans: a})
	}
	try := func(now time.Time, c *simCall) {
		if len(queue) == 0 {
			if p, ok := l.TryAcquire(); ok {
				send(now, c, p)
				return
			}
		}
		if l.Wait() > cfg.maxWait || len(queue) >= l.maxQueueLocked() {
			res.refused++
			lats = append(lats, now.Sub(c.start))
			return
		}
		c.queuedAt = now
		queue = append(queue, c)
	}
	for now := t0; now.Before(end.Add(3 * time.Second)); now = clk.Now() {
		if cfg.change != nil && !changed && now.Sub(t0) >= cfg.changeAt {
			cfg.change(&b)
			changed = true
		}
		for now.Before(end) && !nextArrival.After(now) {
			res.calls++
			try(now, &simCall{start: nextArrival})
			nextArrival = nextArrival.Add(arrivalEvery)
		}
		// Due events.
		keep := events[:0]
		var due []simEvent
		for _, e := range events {
			if e.at.After(now) {
				keep = append(keep, e)
			} else {
				due = append(due, e)
			}
		}
		events = keep
		for _, e := range due {
			if e.retry {
				try(now, e.call)
				continue
			}
			if e.ans.busy {
				e.permit.Done(Busy)
				if e.call.attempts < cfg.attempts {
					ceil := 25 * time.Millisecond << (e.call.attempts - 1)
					d := time.Duration(rng.Int64N(int64(ceil) + 1))
					events = append(events, simEvent{at: now.Add(d), call: e.call, retry: true})
				} else {
					lats = append(lats, now.Sub(e.call.start))
				}
				continue
			}
			b.inflight--
			e.permit.Done(Success)
			res.ok++
			if !now.Before(half) {
				okSecondHalf++
			}
			lats = append(lats, now.Sub(e.call.start))
		}
		// Waiting calls, in order.
		for len(queue) > 0 {
			c := queue[0]
			if now.Sub(c.queuedAt) > cfg.maxWait {
				queue = queue[1:]
				res.refused++
				lats = append(lats, now.Sub(c.start))
				continue
			}
			p, ok := l.TryAcquire()
			if !ok {
				break
			}
			queue = queue[1:]
			send(now, c, p)
		}
		if !now.Before(nextSample) {
			res.limits = append(res.limits, l.Limit())
			nextSample = nextSample.Add(time.Second)
		}
		clk.Advance(time.Millisecond)
	}
	res.goodput = float64(okSecondHalf) / (cfg.dur / 2).Seconds()
	res.randomBusy = b.random
	res.stats = l.Stats()
	if len(lats) > 0 {
		sortDurations(lats)
		res.p99 = lats[len(lats)*99/100]
	}
	return res
}

func (l *Limiter) maxQueueLocked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxQueue()
}

func sortDurations(d []time.Duration) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j] < d[j-1]; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

var simTrace = flag.Bool("simtrace", false, "log every estimator decision in simulations")

// TestLimitUnderLoad drives a Limiter with simulated load against simulated
// providers (a deterministic, single-goroutine simulation on a manual clock)
// and holds it to the capacity targets: a provider that answers half of its
// calls busy at random keeps all of its capacity in use (as many answers as
// retrying without a router would get, at no more upstream calls); a
// provider that is full past a concurrency or rate cap is found and held,
// with few busy answers and most of what it can serve served.
func TestLimitUnderLoad(t *testing.T) {
	dur := 30 * time.Second
	if raceEnabled {
		dur = 6 * time.Second
	}
	type want struct {
		minOK, maxUpstream, maxBusy, minGoodput float64 // maxBusy: busy answers above the random floor, per upstream call
	}
	tests := []struct {
		name string
		cfg  simConfig
		want want
		race bool // also under the race detector
	}{
		{
			// Recipe with 3 attempts: 1-0.5^3 = 87.5% at 1.75 calls (2% slack for
			// chance).
			name: "sole backend, 50% busy at random, 20 ms",
			cfg: simConfig{rate: 500, attempts: 3, maxWait: time.Second,
				backend: simBackend{busyRate: 0.5, lat: 20 * time.Millisecond, jitter: 5 * time.Millisecond}},
			want: want{minOK: 0.85, maxUpstream: 1.78, maxBusy: 1, minGoodput: 0.85 * 500},
			race: true,
		},
		{
			name: "sole backend, 50% busy at random, 200 ms",
			cfg: simConfig{rate: 500, attempts: 3, maxWait: time.Second,
				backend: simBackend{busyRate: 0.5, lat: 200 * time.Millisecond, jitter: 50 * time.Millisecond}},
			want: want{minOK: 0.85, maxUpstream: 1.78, maxBusy: 1, minGoodput: 0.85 * 500},
		},
		{
			name: "turns 50% busy half-way",
			cfg: simConfig{rate: 500, attempts: 3, maxWait: time.Second, changeFrac: 0.5,
				backend: simBackend{lat: 20 * time.Millisecond, jitter: 5 * time.Millisecond},
				change:  func(b *simBackend) { b.busyRate = 0.5 }},
			want: want{minOK: 0.9, maxUpstream: 1.5, maxBusy: 1, minGoodput: 0.85 * 500},
		},
		{
			// Capacity 20/50 ms = 400/s; offered 800/s.
			name: "concurrency cap 20 at twice its capacity",
			cfg: simConfig{rate: 800, attempts: 3, maxWait: time.Second,
				backend: simBackend{maxConc: 20, lat: 50 * time.Millisecond, jitter: 12 * time.Millisecond}},
			want: want{maxBusy: 0.05, minGoodput: 0.9 * 400},
			race: true,
		},
		{
			name: "rate cap 400/s at twice it, 200 ms",
			cfg: simConfig{rate: 800, attempts: 3, maxWait: time.Second,
				backend: simBackend{qps: 400, lat: 200 * time.Millisecond, jitter: 50 * time.Millisecond}},
			want: want{maxBusy: 0.05, minGoodput: 0.9 * 400},
		},
		{
			// 400/s of which half busy: 200 answers/s at most. Against a
			// floor of 50% random busy answers, an excess of rate-limited
			// ones is hard to tell from chance within a cohort: about 20%
			// of upstream calls go to 429s here (the case the README's
			// table calls out).
			name: "50% busy at random under a rate cap, 200 ms",
			cfg: simConfig{rate: 500, attempts: 3, maxWait: time.Second,
				backend: simBackend{busyRate: 0.5, qps: 400, lat: 200 * time.Millisecond, jitter: 50 * time.Millisecond}},
			want: want{minGoodput: 0.9 * 200, maxBusy: 0.25},
		},
		{
			// 200 slots of 2 s: 100/s, offered exactly that.
			name: "concurrency cap 200, 2 s calls",
			cfg: simConfig{rate: 100, attempts: 3, maxWait: time.Second,
				backend: simBackend{maxConc: 200, lat: 2 * time.Second, jitter: 500 * time.Millisecond}},
			want: want{minOK: 0.9, maxBusy: 0.05, minGoodput: 0.9 * 100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if raceEnabled && !tt.race {
				t.Skip("slow under the race detector; the same code runs in the other cases")
			}
			cfg := tt.cfg
			cfg.dur = dur
			if cfg.change != nil {
				cfg.changeAt = time.Duration(float64(dur) * cfg.changeFrac)
			}
			r := simulate(t, cfg, Settings{}, 1)
			t.Logf("%v", r)
			ok := float64(r.ok) / float64(r.calls)
			up := float64(r.upstream) / float64(r.calls)
			// Steady state: the second half of the run.
			excess := float64(r.excess2) / float64(max(r.upstream2, 1))
			if ok < tt.want.minOK {
				t.Errorf("%.1f%% of calls answered, want at least %.1f%%", 100*ok, 100*tt.want.minOK)
			}
			if tt.want.maxUpstream > 0 && up > tt.want.maxUpstream {
				t.Errorf("%.2f upstream calls per call, want at most %.2f", up, tt.want.maxUpstream)
			}
			if excess > tt.want.maxBusy {
				t.Errorf("%.1f%% of upstream calls in the second half busy beyond the random share, want at most %.1f%%", 100*excess, 100*tt.want.maxBusy)
			}
			if r.goodput < tt.want.minGoodput {
				t.Errorf("goodput %.0f/s in the second half, want at least %.0f/s", r.goodput, tt.want.minGoodput)
			}
		})
	}
}
