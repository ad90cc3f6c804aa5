package spend

import (
	"context"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// A pool is one limit of one tenant (its token rate, or its budget for one
// period) as this replica holds it. With Redis the limit is the fleet's,
// counted in Redis; a replica leases units from it ahead of need (sized to
// its recent demand), reserves calls from the lease locally, and sends
// back what it owes in the next lease request: the charges of finished
// calls, the releases of reservations whose lease has ended, and the
// unreserved rest of an ended lease. A call therefore pays no Redis round
// trip while the replica holds enough leased units; the next lease is
// requested in the background when half of one is reserved.
//
// Without Redis (none configured, or it did not answer within the Store's
// timeout), the replica decides on its own, for its share of the limit
// (1/replicas): a local GCRA for a rate, a local count for a budget.
const (
	// rateLeaseAhead and budgetLeaseAhead size a lease: the units this
	// much of the replica's recent demand would reserve (and at least what
	// the call waiting for it needs).
	rateLeaseAhead   = 50 * time.Millisecond
	budgetLeaseAhead = 250 * time.Millisecond
	// leaseTTL is how long leased units stay this replica's; the rest is
	// given back with the next request (or by the sync loop).
	leaseTTL = 500 * time.Millisecond
	// budgetRecheck is how long a budget that could not cover a call is
	// believed before Redis is asked again (other replicas give back what
	// they leased and did not reserve).
	budgetRecheck = time.Second
	// leaseTimeoutFactor times the Store's timeout bounds a lease request,
	// as for the fleet's qps limiter: a caller waits for one at most the
	// Store's timeout and then decides locally.
	leaseTimeoutFactor = 10
)

// rateScript is GCRA on Redis's clock over tokens, leasing and settling in
// one round trip. The tenant's theoretical arrival time (TAT) first takes
// what the replica owes (owed units, negative for units given back; the
// TAT never goes below now: a full bucket stays full). Then, when units
// are asked for, the bucket conforms unless the TAT is more than the
// tolerance ahead of now, and grants what the replica wants, up to what
// conforms, but at least what its waiting call needs: a call larger than
// what is left (or than the whole burst) is let through as debt, which the
// next calls wait off, so the long-run rate stays exact.
//
// KEYS[1] the TAT (µs); ARGV interval (µs a token), tolerance (µs), owed,
// need, want. Returns {granted, µs until the bucket conforms when refused}.
var rateScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local owed = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
tat = tat + owed * interval
if tat < now then tat = now end
local granted, wait = 0, 0
if need + want > 0 then
  if tat - now > tol then
    wait = math.ceil(tat - tol - now)
  else
    local avail = math.floor((now + tol - tat) / interval)
    granted = math.max(need, math.min(want, avail))
    tat = tat + granted * interval
  end
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {tostring(granted), tostring(wait)}
`)

// budgetScript counts a period's spend. What the replica owes is added
// first (never below zero); then, when units are asked for, it grants what
// the replica wants, up to what is left, if what is left covers what its
// waiting call needs.
//
// KEYS[1] the units used (and leased) in the period; ARGV limit, owed,
// need, want, the key's time to live (ms). Returns {granted, used}.
var budgetScript = redis.NewScript(`
local limit = tonumber(ARGV[1])
local owed = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local used = tonumber(redis.call('GET', KEYS[1])) or 0
used = used + owed
if used < 0 then used = 0 end
local granted = 0
if need + want > 0 then
  local left = limit - used
  if left > 0 and left >= need then
    granted = math.max(need, math.min(want, left))
    used = used + granted
  end
end
redis.call('SET', KEYS[1], string.format('%.9f', used), 'PX', ARGV[5])
return {tostring(granted), tostring(used)}
`)

// limit is what a pool enforces now, from the live policy; it is passed
// with each call, so that a config change applies at once.
type limit struct {
	rate  float64   // units a second (a rate pool)
	burst float64   // units above the steady rate (a rate pool)
	max   float64   // units in the period (a budget pool)
	end   time.Time // end of the period (a budget pool)
}

// pool is one limit as this replica holds it. Its fields are guarded by
// mu.
type pool struct {
	key    string // in Redis
	budget bool   // a budget's count, not a rate

	mu  sync.Mutex
	lim limit // the last one seen, for the sync loop
	// The lease: units booked in Redis for this replica, not reserved yet.
	avail   float64
	gen     uint64 // the lease's generation: a new lease after an ended one
	expires time.Time
	low     float64       // ask for the next lease at this many units
	leasing chan struct{} // non-nil while a lease request runs; closed when it ends
	// deniedUntil: a rate pool has no unit before then; a budget pool
	// covers no call larger than left (plus avail) before then.
	deniedUntil time.Time
	left        float64
	owed        float64 // units Redis has yet to add (negative: to take back)
	spent       float64 // units reserved since the last lease request
	asked       time.Time
	demand      float64 // units a second, smoothed
	synced      time.Time
	// used is a budget's units used in the period, as Redis last said.
	used float64
	// charged is a budget's charges Redis has not acknowledged yet (all of
	// them without Redis); heldLocal the units reserved by local
	// decisions and not released.
	charged, heldLocal float64
	// tat is the local GCRA's theoretical arrival time for a rate.
	tat time.Time
}

// ticket is the part of a reservation one pool holds.
type ticket struct {
	p     *pool
	units float64
	gen   uint64 // the lease the units came from; 0: a local decision
}

// expire gives back the unreserved rest of an ended lease.
func (p *pool) expire(now time.Time) {
	if p.avail > 0 && !now.Before(p.expires) {
		p.owed -= p.avail
		p.avail = 0
	}
}

// leased reports whether the current lease holds at least units.
func (p *pool) leased(now time.Time, units float64) bool {
	return p.gen > 0 && now.Before(p.expires) && p.avail >= units
}

// take reserves units from p: from the lease when it holds them, else
// after a lease request (waited for at most the Store's timeout), else by
// a local decision. When refused it returns how long until the limit
// would admit a call (for a budget, until the period ends).
func (m *Meter) take(p *pool, units float64, lim limit) (ticket, bool, time.Duration) {
	for range 3 {
		p.mu.Lock()
		now := m.now()
		p.lim = lim
		p.expire(now)
		if p.leased(now, units) {
			p.avail -= units
			p.spent += units
			if p.avail <= p.low && p.leasing == nil && m.store.Available() {
				m.lease(p, now, 0)
			}
			t := ticket{p: p, units: units, gen: p.gen}
			p.mu.Unlock()
			return t, true, 0
		}
		if wait, refused := p.refused(now, units); refused {
			p.mu.Unlock()
			return ticket{}, false, wait
		}
		if p.leasing == nil {
			need := units
			if p.gen > 0 && now.Before(p.expires) {
				need -= p.avail
			}
			if !m.store.Available() || !m.lease(p, now, need) {
				t, ok, wait := m.takeLocal(p, now, units)
				p.mu.Unlock()
				return t, ok, wait
			}
		}
		leasing := p.leasing
		p.mu.Unlock()
		if !m.await(leasing) {
			break // Redis is slow: decide locally
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return m.takeLocal(p, m.now(), units)
}

// refused reports whether what Redis last said refuses units now, and the
// wait to report.
func (p *pool) refused(now time.Time, units float64) (time.Duration, bool) {
	if !now.Before(p.deniedUntil) {
		return 0, false
	}
	if !p.budget {
		return p.deniedUntil.Sub(now), true
	}
	avail := 0.0
	if p.gen > 0 && now.Before(p.expires) {
		avail = p.avail
	}
	return p.lim.end.Sub(now), units > p.left+avail
}

// takeLocal decides on the replica's own, for its share of the limit: a
// local GCRA for a rate (with the same debt rule as Redis's), a local count
// for a budget. p.mu is held.
func (m *Meter) takeLocal(p *pool, now time.Time, units float64) (ticket, bool, time.Duration) {
	share := 1 / float64(m.replicas)
	if p.budget {
		allowance := (p.lim.max - p.used) * share
		if p.charged+p.heldLocal+units > allowance {
			return ticket{}, false, p.lim.end.Sub(now)
		}
		p.heldLocal += units
		return ticket{p: p, units: units}, true, 0
	}
	rate, tol := p.lim.rate*share, time.Duration(p.lim.burst/p.lim.rate*float64(time.Second))
	if p.tat.Before(now) {
		p.tat = now
	}
	if ahead := p.tat.Sub(now); ahead > tol {
		return ticket{}, false, ahead - tol
	}
	p.tat = p.tat.Add(seconds(units / rate))
	return ticket{p: p, units: units}, true, 0
}

// release gives back the units of t: to its lease while that lease runs
// (paying first what p owes Redis), else to Redis (owed), or to the local
// account that reserved them.
func (m *Meter) release(t ticket) {
	p := t.p
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := m.now()
	switch {
	case t.gen == 0 && p.budget:
		p.heldLocal = max(p.heldLocal-t.units, 0)
	case t.gen == 0:
		if p.lim.rate > 0 {
			p.tat = p.tat.Add(-seconds(t.units / (p.lim.rate / float64(m.replicas))))
		}
		if p.tat.Before(now) {
			p.tat = now
		}
	case t.gen == p.gen && now.Before(p.expires):
		// Units Redis booked with the lease first cover the charges it
		// has yet to learn of; the rest is the lease's again.
		pay := min(t.units, max(p.owed, 0))
		p.owed -= pay
		if p.budget {
			p.charged = max(p.charged-pay, 0)
		}
		p.avail += t.units - pay
	default:
		p.owed -= t.units
	}
}

// charge counts units a finished call spent: from the current lease while
// it holds them (Redis booked them with it), the rest owed to Redis; a
// replica deciding locally counts them at once.
func (m *Meter) charge(p *pool, units float64, lim limit) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := m.now()
	p.lim = lim
	if p.gen > 0 && now.Before(p.expires) {
		from := min(p.avail, units)
		p.avail -= from
		units -= from
	}
	if m.store != nil {
		p.owed += units
	}
	if p.budget {
		p.charged += units // what Redis has not counted yet
		return
	}
	if !m.store.Available() {
		if p.tat.Before(now) {
			p.tat = now
		}
		p.tat = p.tat.Add(seconds(units / (lim.rate / float64(m.replicas))))
	}
}

func seconds(s float64) time.Duration {
	if s > 1e9 || math.IsNaN(s) {
		return time.Duration(math.MaxInt64 / 2)
	}
	return time.Duration(s * float64(time.Second))
}

// await waits for a lease request to end, at most the Store's timeout, and
// reports whether it did.
func (m *Meter) await(leasing chan struct{}) bool {
	select {
	case <-leasing:
		return true
	default:
	}
	t := time.NewTimer(m.store.Timeout())
	defer t.Stop()
	select {
	case <-leasing:
		return true
	case <-t.C:
		return false
	}
}

// lease requests a lease of at least need units (0: a refill sized to the
// demand, or only a settlement) in the background, carrying what p owes.
// It reports false when the Meter is closed. p.mu is held.
func (m *Meter) lease(p *pool, now time.Time, need float64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	want := 0.0
	if need > 0 || p.spent > 0 {
		ahead := rateLeaseAhead
		if p.budget {
			ahead = budgetLeaseAhead
		}
		if !p.asked.IsZero() {
			if d := now.Sub(p.asked).Seconds(); d > 0 {
				// Units a second since the last request, smoothed; a
				// replica that was idle starts small again.
				p.demand = 0.5*p.demand + 0.5*(p.spent+need)/d
			}
		}
		want = p.demand * ahead.Seconds()
		if p.budget {
			want = min(want, p.lim.max/20)
		} else {
			want = min(want, p.lim.burst/2)
		}
		want = math.Ceil(max(want, need))
		p.spent, p.asked = 0, now
	}
	owed, charged, lim, budget := p.owed, p.charged, p.lim, p.budget
	done := make(chan struct{})
	p.leasing = done
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		var res []string
		err := m.store.Do(context.Background(), leaseTimeoutFactor*m.store.Timeout(), func(ctx context.Context, r redis.Cmdable) error {
			var err error
			if budget {
				ttl := max(lim.end.Sub(m.now())+24*time.Hour, time.Hour)
				res, err = budgetScript.Run(ctx, r, []string{p.key}, lim.max, owed, need, want, ttl.Milliseconds()).StringSlice()
			} else {
				interval := 1e6 / lim.rate
				res, err = rateScript.Run(ctx, r, []string{p.key}, interval, lim.burst*interval, owed, need, want).StringSlice()
			}
			return err
		})
		granted, x := parsePair(res)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.leasing = nil
		close(done)
		if err != nil || len(res) != 2 {
			return // the Store is in backoff now: callers decide locally
		}
		now := m.now()
		p.owed -= owed
		p.synced = now
		if budget {
			p.charged -= charged
			p.used = x
			p.heldLocal = 0 // Redis counts from here; local holds end with their calls
		}
		if granted > 0 {
			if p.gen == 0 || !now.Before(p.expires) {
				p.gen++
				p.avail = 0
			}
			p.avail += granted
			p.expires = now.Add(m.leaseTTL)
			p.low = p.avail / 2
			p.deniedUntil = time.Time{}
			return
		}
		switch {
		case need+want <= 0:
		case budget:
			p.left = max(lim.max-x, 0)
			p.deniedUntil = now.Add(budgetRecheck)
		case x > 0:
			p.deniedUntil = now.Add(time.Duration(x) * time.Microsecond)
		}
	}()
	return true
}

// parsePair reads a script's two numbers.
func parsePair(res []string) (float64, float64) {
	if len(res) != 2 {
		return 0, 0
	}
	a, _ := strconv.ParseFloat(res[0], 64)
	b, _ := strconv.ParseFloat(res[1], 64)
	return a, b
}

// sync sends what p owes when no request runs, and refreshes a budget's
// count now and then (its gauge); it ends an expired lease first. It runs
// on the sync loop.
func (m *Meter) sync(p *pool, now time.Time, every time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire(now)
	stale := p.budget && now.Sub(p.synced) >= every
	if p.leasing != nil || p.lim == (limit{}) || (p.owed == 0 && !stale) || !m.store.Available() {
		return
	}
	m.lease(p, now, 0)
}
