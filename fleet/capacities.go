package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of the capacity sharing.
const (
	// capacityEvery is how often a replica writes its learned limits and
	// reads the others'.
	capacityEvery = 5 * time.Second
	// Another replica's limit counts while it is at most three writes old.
)

// Capacities shares the concurrency limits each replica has learned for its
// backends (see package capacity), so that a replica that starts, or meets a
// backend for the first time, begins where the others are instead of
// rediscovering the provider's limit by overrunning it.
//
// Every 5 s (WithEvery) a background goroutine writes this replica's learned
// limits (from the source function) into one Redis hash, field
// "backend\x00replica", value "limit unix-millis", and reads the hash back;
// Limit answers from that copy with no I/O. Without Redis (a nil Store, or
// Redis down) Limit returns 0 and nothing is shared.
//
// Capacities is safe for concurrent use. Limit never blocks. It starts one
// goroutine when its Store is not nil; Close stops it.
type Capacities struct {
	store   *Store
	now     func() time.Time
	key     string
	replica string
	source  func() map[string]float64
	onLoad  func()
	every   time.Duration

	view atomic.Pointer[map[string]float64] // backend -> median of the others' limits

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewCapacities returns the capacity sharing through s. source returns this
// replica's learned limits by backend (only the learned ones); onLoad, when
// not nil, is called after each read of the others' limits, outside any
// lock (the router seeds the limits that have learned nothing yet).
func NewCapacities(s *Store, source func() map[string]float64, onLoad func(), opts ...Option) *Capacities {
	o := newOptions(opts)
	c := &Capacities{store: s, now: o.now, source: source, onLoad: onLoad, every: o.every}
	if c.every <= 0 {
		c.every = capacityEvery
	}
	empty := map[string]float64{}
	c.view.Store(&empty)
	if s == nil {
		return c
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	c.replica = hex.EncodeToString(id[:])
	c.key = s.Key("capacity")
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go c.loop(ctx)
	return c
}

// Limit returns the median of the limits other replicas learned for
// backend, or 0 when none is known.
func (c *Capacities) Limit(backend string) float64 {
	if c == nil {
		return 0
	}
	return (*c.view.Load())[backend]
}

// Close stops the background goroutine and waits for it.
func (c *Capacities) Close() error {
	if c == nil || c.cancel == nil {
		return nil
	}
	c.cancel()
	c.wg.Wait()
	c.cancel = nil
	return nil
}

func (c *Capacities) loop(ctx context.Context) {
	defer c.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.sync(ctx)
		t.Reset(c.every)
	}
}

// sync writes this replica's limits and reads everyone's.
func (c *Capacities) sync(ctx context.Context) {
	now := c.now()
	mine := c.source()
	var all map[string]string
	err := c.store.Do(ctx, publishTimeout, func(ctx context.Context, r redis.Cmdable) error {
		_, err := r.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for b, l := range mine {
				p.HSet(ctx, c.key, b+"\x00"+c.replica, strconv.FormatFloat(l, 'f', 1, 64)+" "+strconv.FormatInt(now.UnixMilli(), 10))
			}
			p.PExpire(ctx, c.key, 6*c.every)
			return nil
		})
		if err != nil {
			return err
		}
		all, err = r.HGetAll(ctx, c.key).Result()
		return err
	})
	if err != nil {
		return // Redis is down or slow: nothing shared this round
	}
	others := map[string][]float64{}
	var stale []string
	for field, v := range all {
		b, replica, ok := strings.Cut(field, "\x00")
		if !ok {
			continue
		}
		ls, ms, ok := strings.Cut(v, " ")
		l, err1 := strconv.ParseFloat(ls, 64)
		at, err2 := strconv.ParseInt(ms, 10, 64)
		if !ok || err1 != nil || err2 != nil || l <= 0 {
			continue
		}
		if now.Sub(time.UnixMilli(at)) > 3*c.every {
			stale = append(stale, field)
			continue
		}
		if replica != c.replica {
			others[b] = append(others[b], l)
		}
	}
	view := make(map[string]float64, len(others))
	for b, ls := range others {
		slices.Sort(ls)
		view[b] = ls[len(ls)/2]
	}
	c.view.Store(&view)
	if len(stale) > 0 {
		_ = c.store.Do(ctx, publishTimeout, func(ctx context.Context, r redis.Cmdable) error {
			return r.HDel(ctx, c.key, stale...).Err()
		})
	}
	if c.onLoad != nil {
		c.onLoad()
	}
}
