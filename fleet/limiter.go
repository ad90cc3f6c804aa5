package fleet

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

const (
	// burstWindow sizes a limit's burst: a backend with a qps limit admits
	// up to qps*burstWindow calls at once (at least one).
	burstWindow = 100 * time.Millisecond
	// leaseAhead sizes a lease: enough tokens for this much of the
	// replica's recent demand (at least one, at most the burst).
	leaseAhead = 20 * time.Millisecond
	// leaseTTL is how long leased tokens stay usable; unused ones are lost,
	// so a lease can only make the fleet admit less than its limit, and a
	// call made with a leased token is at most this late against the
	// fleet's schedule.
	leaseTTL = 100 * time.Millisecond
	// leaseTimeoutFactor times Config.Timeout bounds a lease request. A
	// caller waits for one at most Config.Timeout and then decides
	// locally; only a request that takes this much longer, or fails, puts
	// Redis in backoff, so that a short stall does not.
	leaseTimeoutFactor = 10
)

// gcraScript is the Generic Cell Rate Algorithm on Redis's clock, leasing up
// to n calls in one round trip. A call conforms unless the backend's
// theoretical arrival time (TAT) is more than the burst tolerance ahead of
// now; the script grants as many of the n calls as conform and books them.
//
// KEYS[1] the backend's TAT key; ARGV[1] emission interval (µs, 1e6/qps);
// ARGV[2] burst tolerance (µs, interval*(burst-1)); ARGV[3] n. Returns
// {granted, µs until the next call would conform when granted is 0}.
var gcraScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local avail = math.floor((now + tolerance - tat) / interval) + 1
if avail < 1 then return {0, math.ceil(tat - tolerance - now)} end
local n = math.min(tonumber(ARGV[3]), avail)
local next = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
return {n, 0}
`)

// Limiter holds each backend to its qps across the whole fleet.
//
// With Redis, calls are booked in Redis with GCRA on Redis's clock (so
// replicas' clocks do not matter), in leases: a replica books a few calls at
// once, sized to 20ms of its recent demand, and spends them locally within
// 100ms; unspent ones are dropped. When half a lease is spent the next one
// is requested in the background, so a steady caller never waits for Redis.
// The fleet therefore never exceeds qps (plus its burst of qps/10), a busy
// replica asks Redis once per lease rather than once per call, and when the
// fleet has spent the qps a replica refuses calls locally until Redis says
// the next one conforms.
//
// Without Redis, or when a call to Redis fails or takes longer than
// Config.Timeout, the replica admits its share, qps/Config.Replicas, with a
// local token bucket until Redis is back (see Store for the backoff).
//
// Limiter is safe for concurrent use. Allow blocks only when the replica
// holds no leased call, for at most Config.Timeout (calls for the same
// backend then wait for one lease request rather than each asking Redis),
// and then decides that call locally. Lease requests run on short-lived
// goroutines, each bounded by 10×Config.Timeout; Close waits for them.
type Limiter struct {
	store    *Store
	replicas int
	now      func() time.Time

	buckets sync.Map // backend name → *bucket

	mu     sync.Mutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup
}

// bucket is one backend's state in this replica.
type bucket struct {
	key string // Redis key

	mu          sync.Mutex
	tokens      int           // leased calls not spent yet
	expires     time.Time     // end of the lease
	low         int           // request the next lease at this many tokens
	deniedUntil time.Time     // the fleet has no call to lease before this
	leasing     chan struct{} // non-nil while a lease request runs; closed when it ends
	spent       int           // calls admitted since the last lease request
	asked       time.Time     // time of the last lease request
	demand      float64       // recent calls per second (estimate)

	localQPS float64 // qps the local bucket was built for
	local    *rate.Limiter
}

// NewLimiter returns a limiter that books calls in s; a nil s keeps every
// limit local. replicas is the expected number of replicas, each of which
// admits 1/replicas of a limit when Redis is unavailable; zero or less means
// s's Config.Replicas, or 1 without a Store.
func NewLimiter(s *Store, replicas int, opts ...Option) *Limiter {
	o := newOptions(opts)
	if replicas <= 0 {
		replicas = 1
		if s != nil {
			replicas = s.cfg.replicas()
		}
	}
	return &Limiter{store: s, replicas: replicas, now: o.now}
}

// Close waits for the lease requests in flight (each bounded by
// Config.Timeout). Allow keeps working after Close, locally once the
// leased calls are spent.
func (l *Limiter) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
	return nil
}

// Allow admits one call to backend, whose limit for the whole fleet is qps
// calls per second with a burst of qps/10 (at least 1). It reports whether
// the call may go ahead and, when not, how long until one would. qps <= 0
// means no limit. Allow never fails: when Redis cannot answer within
// Config.Timeout it decides locally.
func (l *Limiter) Allow(ctx context.Context, backend string, qps float64) (bool, time.Duration) {
	if qps <= 0 || math.IsInf(qps, 1) || math.IsNaN(qps) {
		return true, 0
	}
	burst := max(1, int(qps*burstWindow.Seconds()))
	b := l.bucket(backend)
	for range 3 {
		b.mu.Lock()
		now := l.now()
		if b.tokens > 0 && now.Before(b.expires) {
			b.tokens--
			b.spent++
			if b.tokens <= b.low && b.leasing == nil && now.After(b.deniedUntil) && l.store.Available() {
				l.startLease(b, now, qps, burst)
			}
			b.mu.Unlock()
			return true, 0
		}
		if now.Before(b.deniedUntil) {
			wait := b.deniedUntil.Sub(now)
			b.mu.Unlock()
			return false, wait
		}
		if b.leasing == nil && (!l.store.Available() || !l.startLease(b, now, qps, burst)) {
			ok, wait := b.allowLocal(now, qps/float64(l.replicas), max(1, burst/l.replicas))
			b.mu.Unlock()
			return ok, wait
		}
		leasing := b.leasing
		b.mu.Unlock()
		if !l.await(ctx, leasing) {
			// Redis is slow: decide this call locally, without giving up
			// on Redis (the lease request has a longer timeout).
			b.mu.Lock()
			ok, wait := b.allowLocal(l.now(), qps/float64(l.replicas), max(1, burst/l.replicas))
			b.mu.Unlock()
			return ok, wait
		}
	}
	// Other callers spent every lease this one waited for.
	return false, time.Duration(float64(time.Second) / qps)
}

// await waits for a lease request to end, at most Config.Timeout, and
// reports whether it did.
func (l *Limiter) await(ctx context.Context, leasing chan struct{}) bool {
	select {
	case <-leasing:
		return true
	default:
	}
	t := time.NewTimer(l.store.cfg.timeout())
	defer t.Stop()
	select {
	case <-leasing:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

func (l *Limiter) bucket(backend string) *bucket {
	if b, ok := l.buckets.Load(backend); ok {
		return b.(*bucket)
	}
	b, _ := l.buckets.LoadOrStore(backend, &bucket{key: l.store.Key("limit", backend)})
	return b.(*bucket)
}

// startLease requests a lease sized to the recent demand in the background,
// reporting false when the Limiter is closed; b.mu is held.
func (l *Limiter) startLease(b *bucket, now time.Time, qps float64, burst int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if !b.asked.IsZero() {
		if d := now.Sub(b.asked).Seconds(); d > 0 {
			// Calls per second since the last request, smoothed; a
			// replica that was idle starts small again.
			b.demand = 0.5*b.demand + 0.5*float64(b.spent+1)/d
		}
	}
	b.spent, b.asked = 0, now
	n := min(burst, max(1, int(math.Ceil(b.demand*leaseAhead.Seconds()))))
	interval := max(1, int64(1e6/qps))
	tolerance := interval * int64(burst-1)
	done := make(chan struct{})
	b.leasing = done
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		var res []int64
		err := l.store.Do(context.Background(), leaseTimeoutFactor*l.store.cfg.timeout(), func(ctx context.Context, r redis.Cmdable) error {
			var err error
			res, err = gcraScript.Run(ctx, r, []string{b.key}, interval, tolerance, n).Int64Slice()
			return err
		})
		b.mu.Lock()
		defer b.mu.Unlock()
		b.leasing = nil
		close(done)
		if err != nil || len(res) != 2 {
			return // the Store is in backoff now: callers go local
		}
		now := l.now()
		if granted := int(res[0]); granted > 0 {
			if !now.Before(b.expires) {
				b.tokens = 0
			}
			b.tokens += granted
			b.expires = now.Add(leaseTTL)
			b.low = granted / 2
			return
		}
		b.deniedUntil = now.Add(time.Duration(res[1]) * time.Microsecond)
	}()
	return true
}

// allowLocal admits the replica's share of the limit; b.mu is held.
func (b *bucket) allowLocal(now time.Time, share float64, shareBurst int) (bool, time.Duration) {
	if b.local == nil {
		b.local = rate.NewLimiter(rate.Limit(share), shareBurst)
		b.localQPS = share
	} else if b.localQPS != share {
		b.localQPS = share
		b.local.SetLimitAt(now, rate.Limit(share))
		b.local.SetBurstAt(now, shareBurst)
	}
	if b.local.AllowN(now, 1) {
		return true, 0
	}
	return false, time.Duration(float64(time.Second) / share)
}
