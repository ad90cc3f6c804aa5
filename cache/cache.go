package cache

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/detour-dev/detour/fleet"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// maxPendingWrites bounds the Redis writes in flight; more are dropped (the
// answer is still in the local tier).
const maxPendingWrites = 64

// Cache answers repeated requests: a local in-memory tier, an optional
// shared tier in the fleet's Redis, stale-if-error, and coalescing of
// identical concurrent requests (see Do and Stream).
//
// Cache is safe for concurrent use. Get and GetStale block for at most
// Config.RedisTimeout (a local hit does no I/O); Put never blocks on Redis
// (it writes in the background); Do and Stream block until the shared
// upstream call ends or the caller's ctx does. A Redis that is down or slow
// makes the shared tier miss, never fail. Close stops the background work.
type Cache struct {
	cfg   Config
	local *local       // nil: no local tier
	store *fleet.Store // nil: no shared tier
	now   func() time.Time
	log   *slog.Logger

	flights flights
	writes  chan struct{} // semaphore of background Redis writes
	wg      sync.WaitGroup

	localHits, sharedHits, staleHits, misses, coalesced, stored atomic.Uint64
}

// Option configures a Cache.
type Option func(*Cache)

// WithClock sets the clock that dates answers and decides freshness. The
// default is time.Now. now must be safe for concurrent use and not block.
// (Redis expires keys on its own clock, at the end of the stale window.)
func WithClock(now func() time.Time) Option { return func(c *Cache) { c.now = now } }

// WithLogger sets where unexpected trouble (a corrupt entry) is logged. The
// default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *Cache) { c.log = l } }

// New returns a cache with policy cfg whose shared tier is store (nil, or
// cfg.LocalOnly, means local only). It does no I/O.
func New(cfg Config, store *fleet.Store, opts ...Option) *Cache {
	c := &Cache{cfg: cfg, now: time.Now, log: slog.Default(), writes: make(chan struct{}, maxPendingWrites)}
	if cfg.maxBytes() > 0 {
		c.local = newLocal(cfg.maxBytes())
	}
	if !cfg.LocalOnly {
		c.store = store
	}
	for _, o := range opts {
		o(c)
	}
	c.flights.init()
	return c
}

// Close cancels the shared upstream calls still running (their callers get
// the error) and waits for them and for background Redis writes. It does
// not close the fleet.Store.
func (c *Cache) Close() error {
	c.flights.mu.Lock()
	closing := c.flights.closing
	c.flights.closing = true
	for _, m := range []map[flightKey]*flight{c.flights.unary, c.flights.streams} {
		for _, f := range m {
			f.cancel()
		}
	}
	c.flights.mu.Unlock()
	if !closing {
		c.wg.Wait()
	}
	return nil
}

// Get returns the fresh answer for p, from the local tier or else from
// Redis (then kept locally for the rest of its life). It reports false when
// p is not Cacheable, on a miss, and when Redis cannot answer within
// Config.RedisTimeout.
func (c *Cache) Get(ctx context.Context, p Plan) (*Hit, bool) {
	return c.get(ctx, p, false)
}

// GetStale returns an answer for p that is at most p.MaxStale past its TTL
// (or a fresh one, should one have appeared): the router's last resort when
// every backend and fallback failed. A stale Hit is marked STALE_CACHE.
func (c *Cache) GetStale(ctx context.Context, p Plan) (*Hit, bool) {
	if p.MaxStale <= 0 {
		// Only a fresh answer can do.
		return c.get(ctx, p, false)
	}
	return c.get(ctx, p, true)
}

func (c *Cache) get(ctx context.Context, p Plan, stale bool) (*Hit, bool) {
	if !p.Cacheable {
		return nil, false
	}
	now := c.now()
	usable := func(e *entry) (*Hit, bool) {
		if now.Before(e.freshUntil) && (p.MaxAge <= 0 || now.Sub(e.stored) <= p.MaxAge) {
			return &Hit{Age: max(0, now.Sub(e.stored)), e: e}, true
		}
		if stale && now.Sub(e.freshUntil) <= p.MaxStale && now.Before(e.staleUntil) {
			return &Hit{Age: max(0, now.Sub(e.stored)), Stale: true, e: e}, true
		}
		return nil, false
	}
	var found *entry
	if c.local != nil {
		if e, ok := c.local.get(p.Key, now); ok {
			if h, ok := usable(e); ok && !h.Stale {
				c.localHits.Add(1)
				return h, true
			}
			found = e // stale here; Redis may hold a fresher answer
		}
	}
	if e := c.getShared(ctx, p.Key, now); e != nil && (found == nil || e.stored.After(found.stored)) {
		if c.local != nil {
			c.local.add(p.Key, e)
		}
		if h, ok := usable(e); ok {
			h.Shared = true
			if h.Stale {
				c.staleHits.Add(1)
			} else {
				c.sharedHits.Add(1)
			}
			return h, true
		}
	}
	if found != nil {
		if h, ok := usable(found); ok {
			c.staleHits.Add(1)
			return h, true
		}
	}
	if !stale {
		c.misses.Add(1)
	}
	return nil, false
}

func (c *Cache) getShared(ctx context.Context, k Key, now time.Time) *entry {
	if c.store == nil {
		return nil
	}
	var b []byte
	err := c.store.Do(ctx, c.cfg.redisTimeout(), func(ctx context.Context, r redis.Cmdable) error {
		var err error
		b, err = r.Get(ctx, c.redisKey(k)).Bytes()
		return err
	})
	if err != nil {
		return nil
	}
	e, err := decodeEntry(b)
	if err != nil {
		c.log.Warn("cache: dropping a corrupt entry from Redis", "key", k.String(), "err", err)
		return nil
	}
	if !now.Before(e.staleUntil) {
		return nil
	}
	return e
}

func (c *Cache) redisKey(k Key) string { return c.store.Key("cache", k.String()) }

// Put stores resp as the answer to p's request, unless p is not Cacheable,
// resp is not a live answer (source LIVE or unset: fallback and cached
// answers are not stored), it is not a finished answer (it needs a finish
// reason and content: an answer cut short, or one that says nothing, must
// not be served again to every caller), or it is larger than
// Config.MaxEntryBytes. The local tier is written at once, Redis in the
// background.
func (c *Cache) Put(p Plan, resp *detourv1.CompleteResponse) {
	if resp == nil || !storable(resp.GetSource()) || resp.GetFinishReason() == "" || resp.GetContent() == "" {
		return
	}
	c.put(p, resp, nil)
}

// PutStream stores the chunks of a completed stream as the answer to p's
// request, on the same conditions as Put (every chunk must be live, a chunk
// must carry a finish reason and one some content, none may be continued).
// A Hit replays them as they came; Hit.Response joins them.
func (c *Cache) PutStream(p Plan, chunks []*detourv1.CompleteChunk) {
	finished, content := false, false
	for _, ch := range chunks {
		if !storable(ch.GetSource()) || ch.GetContinued() {
			// A continued stream is two backends' answers spliced: served,
			// never stored.
			return
		}
		finished = finished || ch.GetFinishReason() != ""
		content = content || ch.GetDelta() != ""
	}
	if !finished || !content {
		return
	}
	c.put(p, nil, chunks)
}

func storable(s detourv1.Source) bool {
	return s == detourv1.Source_SOURCE_LIVE || s == detourv1.Source_SOURCE_UNSPECIFIED
}

func (c *Cache) put(p Plan, resp *detourv1.CompleteResponse, chunks []*detourv1.CompleteChunk) {
	if !p.Cacheable || (c.local == nil && c.store == nil) {
		return
	}
	e := newEntry(resp, chunks, c.now(), p.TTL, c.cfg.staleWindow())
	b, err := e.encode()
	if err != nil || len(b) > c.cfg.maxEntryBytes() {
		return
	}
	e.size = int64(len(b)) + entryOverhead
	c.stored.Add(1)
	if c.local != nil {
		c.local.add(p.Key, e)
	}
	if c.store == nil || !c.store.Available() {
		return
	}
	select {
	case c.writes <- struct{}{}:
	default:
		return // too many writes pending: Redis is slow; keep it local
	}
	write := func() {
		defer func() { <-c.writes }()
		ttl := e.staleUntil.Sub(c.now())
		if ttl <= 0 {
			return
		}
		// Bounded by the timeout; Close waits for it.
		_ = c.store.Do(context.Background(), c.cfg.redisTimeout(), func(ctx context.Context, r redis.Cmdable) error {
			return r.Set(ctx, c.redisKey(p.Key), b, ttl).Err()
		})
	}
	if !c.spawn(write) {
		<-c.writes
	}
}

// Stats counts what the cache did since New.
type Stats struct {
	LocalHits  uint64 // fresh answers from the local tier
	SharedHits uint64 // fresh answers from Redis
	StaleHits  uint64 // stale answers served by GetStale
	Misses     uint64 // Get found no fresh answer
	Coalesced  uint64 // callers that shared another caller's upstream call
	Stored     uint64 // answers stored
	Entries    int    // entries in the local tier now
	Bytes      int64  // their accounted bytes
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		LocalHits: c.localHits.Load(), SharedHits: c.sharedHits.Load(), StaleHits: c.staleHits.Load(),
		Misses: c.misses.Load(), Coalesced: c.coalesced.Load(), Stored: c.stored.Load(),
	}
	if c.local != nil {
		s.Entries, s.Bytes = c.local.stats()
	}
	return s
}

// errClosed is what callers of a shared call get when Close cancels it.
var errClosed = errors.New("cache: closed")
