package fleet

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of the cooldown sharing.
const (
	// resyncEvery is how often a replica rereads every cooldown from Redis,
	// in case a message was lost (Pub/Sub delivers at most once).
	resyncEvery = 10 * time.Second
	// maxCooldown caps a cooldown read from Redis, so that a replica with a
	// wrong clock cannot hold a backend closed for the whole fleet.
	maxCooldown = 10 * time.Minute
	// publishTimeout bounds one publish, off the hot path.
	publishTimeout = 250 * time.Millisecond
)

// publishScript records "backend open until T" in a sorted set (score T in
// Unix milliseconds, only ever extended), drops the entries that ended, and
// announces the change, in one round trip.
//
// KEYS[1] cooldown set, ARGV[1] backend, ARGV[2] until (ms), ARGV[3] now (ms),
// ARGV[4] channel.
var publishScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local ttl = tonumber(ARGV[2]) - tonumber(ARGV[3])
if ttl > 0 then
  local cur = redis.call('PTTL', KEYS[1])
  if cur < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
redis.call('PUBLISH', ARGV[4], ARGV[2] .. ' ' .. ARGV[1])
return 1
`)

// clearScript drops a backend's cooldown and announces it as "0 backend".
//
// KEYS[1] cooldown set, ARGV[1] backend, ARGV[2] channel.
var clearScript = redis.NewScript(`
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '0 ' .. ARGV[1])
return 1
`)

// Cooldowns shares "backend X is open until T" across the fleet, so that the
// replica that finds a backend busy protects all of them.
//
// Only changes travel: Publish (called when a local breaker opens) writes
// the cooldown to a Redis sorted set and announces it on a Pub/Sub channel;
// every replica's Cooldowns subscribes and keeps the fleet's cooldowns in an
// immutable in-memory map. OpenUntil, on the hot path, reads that map with
// one atomic load and does no Redis I/O. On every (re)subscription, and every
// 10s, a replica rereads the whole set, so that a replica that was cut off
// from Redis catches up.
//
// Without Redis (a nil Store, or Redis down) Cooldowns holds the replica's
// own publications only, and local breakers work as before.
//
// Cooldowns is safe for concurrent use. OpenUntil and Publish never block.
// Cooldowns starts two goroutines when its Store is not nil; Close stops
// them.
type Cooldowns struct {
	store *Store
	now   func() time.Time
	log   *slog.Logger
	set   string // sorted set key
	ch    string // Pub/Sub channel

	view atomic.Pointer[map[string]time.Time] // immutable; replaced whole

	mu      sync.Mutex // guards view writes and pending
	pending map[string]time.Time
	kick    chan struct{}

	cancel context.CancelFunc
	sub    *redis.PubSub
	wg     sync.WaitGroup
}

// Option configures a Cooldowns, a Limiter or a Monitor.
type Option func(*options)

type options struct {
	now   func() time.Time
	log   *slog.Logger
	every time.Duration
}

// WithEvery sets how often Capacities writes and reads the limits. The
// default is 5s.
func WithEvery(d time.Duration) Option { return func(o *options) { o.every = d } }

// WithClock sets the clock Cooldowns and Limiter read. The default is
// time.Now. now must be safe for concurrent use and must not block.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithLogger sets where Redis trouble (and a Monitor's changes) is logged. The default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

func newOptions(opts []Option) options {
	o := options{now: time.Now, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// NewCooldowns returns the cooldowns shared through s. With a non-nil s it
// subscribes in the background; NewCooldowns itself does no I/O.
func NewCooldowns(s *Store, opts ...Option) *Cooldowns {
	o := newOptions(opts)
	c := &Cooldowns{store: s, now: o.now, log: o.log, pending: map[string]time.Time{}, kick: make(chan struct{}, 1)}
	empty := map[string]time.Time{}
	c.view.Store(&empty)
	if s == nil {
		return c
	}
	c.set, c.ch = s.Key("cooldowns"), s.Key("cooldowns")
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.sub = s.Client().Subscribe(ctx) // subscribes on first receive
	c.wg.Add(2)
	go c.listen(ctx)
	go c.publish(ctx)
	return c
}

// OpenUntil returns the time until which the fleet holds backend open, or
// the zero time when it does not hold it open now. It is the hot-path check:
// one atomic load and a map lookup, no I/O, no lock.
func (c *Cooldowns) OpenUntil(backend string) time.Time {
	until, ok := (*c.view.Load())[backend]
	if !ok || !c.now().Before(until) {
		return time.Time{}
	}
	return until
}

// Publish tells the fleet that backend is open until until, typically from
// a breaker's change hook when it moves to Open (breaker.Change.OpenUntil).
// It records the cooldown locally at once and sends it to Redis in the
// background, retrying while Redis is unavailable and the cooldown has not
// ended. It never blocks and may be called under a lock. A cooldown only
// ever extends: an earlier until than the one known does nothing.
func (c *Cooldowns) Publish(backend string, until time.Time) {
	if !until.After(c.now()) {
		return
	}
	c.mu.Lock()
	c.mergeLocked(map[string]time.Time{backend: until})
	if c.store != nil {
		if p, ok := c.pending[backend]; !ok || until.After(p) {
			c.pending[backend] = until
		}
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Clear ends backend's cooldown on every replica at once (an operator reset
// the breaker, or undrained the backend after a repair). It drops the local
// copy at once and tells the fleet in the background; it never blocks.
func (c *Cooldowns) Clear(backend string) {
	c.mu.Lock()
	cur := *c.view.Load()
	if _, ok := cur[backend]; ok {
		next := maps.Clone(cur)
		delete(next, backend)
		c.view.Store(&next)
	}
	if c.store != nil {
		c.pending[backend] = time.Time{} // the zero time: clear
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Close stops the background goroutines and waits for them. Cooldowns
// still answers OpenUntil afterwards, from what it knew.
func (c *Cooldowns) Close() error {
	if c.cancel == nil {
		return nil
	}
	c.cancel()
	err := c.sub.Close() // unblocks a pending receive
	c.wg.Wait()
	c.cancel = nil
	return err
}

// mergeLocked publishes a new view holding the later of the known and the
// given cooldowns, without the ones that ended. c.mu is held.
func (c *Cooldowns) mergeLocked(in map[string]time.Time) {
	now := c.now()
	cur := *c.view.Load()
	changed := false
	for b, u := range in {
		if u.After(now) && u.After(cur[b]) {
			changed = true
			break
		}
	}
	if !changed {
		return
	}
	next := make(map[string]time.Time, len(cur)+len(in))
	for b, u := range cur {
		if u.After(now) {
			next[b] = u
		}
	}
	for b, u := range in {
		if u.After(now) && u.After(next[b]) {
			next[b] = u
		}
	}
	c.view.Store(&next)
}

// drop forgets backend's cooldown (another replica cleared it).
func (c *Cooldowns) drop(backend string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := *c.view.Load()
	if _, ok := cur[backend]; ok {
		next := maps.Clone(cur)
		delete(next, backend)
		c.view.Store(&next)
	}
}

func (c *Cooldowns) merge(in map[string]time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mergeLocked(in)
}

// listen follows the channel. It rereads every cooldown after each
// (re)subscription, since messages sent while it was cut off are lost, and
// every resyncEvery; a reread that fails is retried after the backoff.
func (c *Cooldowns) listen(ctx context.Context) {
	defer c.wg.Done()
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	// Subscribe records the channel even when Redis is down; the receives
	// below reconnect and resubscribe.
	_ = c.sub.Subscribe(ctx, c.ch)
	dirty := true
	var synced time.Time
	for ctx.Err() == nil {
		wait := resyncEvery
		if dirty {
			wait = c.store.cfg.backoff()
		}
		msg, err := c.sub.ReceiveTimeout(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne interface{ Timeout() bool }
			if !errors.As(err, &ne) || !ne.Timeout() {
				// Redis is down or the connection broke: go-redis
				// reconnects on the next receive. Wait so that a Redis
				// that is down costs nothing.
				dirty = true
				if !c.wait(ctx, retry) {
					return
				}
				continue
			}
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				dirty = true
			}
		case *redis.Message:
			if b, u, ok := parseCooldown(m.Payload, c.now()); ok {
				if u.IsZero() {
					c.drop(b)
				} else {
					c.merge(map[string]time.Time{b: u})
				}
			}
		}
		if dirty || c.now().Sub(synced) >= resyncEvery {
			if c.resync(ctx) {
				dirty, synced = false, c.now()
			}
		}
	}
}

// wait waits out a retry delay, reporting false when ctx ended.
func (c *Cooldowns) wait(ctx context.Context, t *time.Timer) bool {
	t.Reset(c.store.cfg.backoff())
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// resync merges every cooldown that has not ended, reporting whether it
// could read them.
func (c *Cooldowns) resync(ctx context.Context) bool {
	now := c.now()
	var zs []redis.Z
	err := c.store.Do(ctx, publishTimeout, func(ctx context.Context, r redis.Cmdable) error {
		var err error
		zs, err = r.ZRangeByScoreWithScores(ctx, c.set, &redis.ZRangeBy{
			Min: strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf",
		}).Result()
		return err
	})
	if err != nil {
		return false
	}
	in := make(map[string]time.Time, len(zs))
	for _, z := range zs {
		b, _ := z.Member.(string)
		in[b] = capUntil(time.UnixMilli(int64(z.Score)), now)
	}
	c.replace(in)
	return true
}

// replace makes the fleet's cooldowns, read from Redis, the view, keeping
// the local ones not yet published: a cooldown another replica cleared
// while this one missed the message (before its subscription took effect,
// or while it was cut off) ends here too.
func (c *Cooldowns) replace(in map[string]time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	next := make(map[string]time.Time, len(in))
	for b, u := range in {
		if p, ok := c.pending[b]; ok && p.IsZero() {
			continue // cleared here, not yet in Redis
		}
		if u.After(now) {
			next[b] = u
		}
	}
	for b, u := range c.pending {
		if u.After(now) && u.After(next[b]) {
			next[b] = u
		}
	}
	c.view.Store(&next)
}

// publish sends pending cooldowns to Redis, and retries the ones Redis did
// not take while they have not ended.
func (c *Cooldowns) publish(ctx context.Context) {
	defer c.wg.Done()
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-retry.C:
		}
		c.mu.Lock()
		batch := maps.Clone(c.pending)
		clear(c.pending)
		c.mu.Unlock()
		now := c.now()
		failed := false
		for b, u := range batch {
			if u.IsZero() {
				err := c.store.Do(ctx, publishTimeout, func(ctx context.Context, r redis.Cmdable) error {
					return clearScript.Run(ctx, r, []string{c.set}, b, c.ch).Err()
				})
				if err != nil && ctx.Err() == nil {
					failed = true
					c.requeue(b, u)
				}
				continue
			}
			if !u.After(now) {
				continue
			}
			if failed {
				c.requeue(b, u)
				continue
			}
			err := c.store.Do(ctx, publishTimeout, func(ctx context.Context, r redis.Cmdable) error {
				return publishScript.Run(ctx, r, []string{c.set},
					b, u.UnixMilli(), now.UnixMilli(), c.ch).Err()
			})
			if err != nil {
				if ctx.Err() != nil {
					return // closing
				}
				failed = true
				c.requeue(b, u)
				if !errors.Is(err, ErrUnavailable) {
					c.log.Warn("fleet: cooldown not shared; retrying while Redis is unavailable", "backend", b, "err", err)
				}
			}
		}
		if failed {
			retry.Reset(c.store.cfg.backoff())
		}
	}
}

func (c *Cooldowns) requeue(b string, u time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.pending[b]; !ok || u.IsZero() || (!p.IsZero() && u.After(p)) {
		c.pending[b] = u
	}
}

// parseCooldown reads a message "untilMillis backend".
func parseCooldown(s string, now time.Time) (string, time.Time, bool) {
	ms, b, ok := strings.Cut(s, " ")
	if !ok || b == "" {
		return "", time.Time{}, false
	}
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	if n == 0 {
		return b, time.Time{}, true // cleared
	}
	return b, capUntil(time.UnixMilli(n), now), true
}

func capUntil(u, now time.Time) time.Time {
	if lim := now.Add(maxCooldown); u.After(lim) {
		return lim
	}
	return u
}
