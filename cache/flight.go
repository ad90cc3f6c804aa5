package cache

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/internal/hop"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// flights are the shared upstream calls in progress, by key. Unary and
// stream calls are kept apart: a unary caller cannot use a half-finished
// stream.
type flights struct {
	mu      sync.Mutex // guards the maps, every flight's waiters, and closing
	closing bool
	unary   map[flightKey]*flight
	streams map[flightKey]*flight
}

// flightKey is a request's key and the hop count of its call (package
// hop): a call that a routing loop brings back to this instance has one
// more hop than the call waiting for it, so it starts its own upstream call
// (which the hop limit ends) instead of joining the one waiting for it and
// waiting with it until the attempt times out.
//
// The routing hints that change which answers a request may get are part of
// it too (Plan.Route): a caller that forbids fallbacks never joins a call
// that may be answered by one. So is the caller's tenant (Plan.Tenant),
// even when the answers are shared: the call runs as one tenant (its place
// in the capacity queue, the user sent upstream with send_tenant_as), so
// it is shared only within that tenant.
type flightKey struct {
	key    Key
	hops   int
	route  string
	tenant string
}

func flightKeyOf(ctx context.Context, p Plan) flightKey {
	return flightKey{p.Key, hop.From(ctx), p.Route, p.Tenant}
}

func (fs *flights) init() {
	fs.unary = map[flightKey]*flight{}
	fs.streams = map[flightKey]*flight{}
}

// flight is one shared upstream call. It runs on its own goroutine under
// its own context, so that no single caller's deadline or cancellation ends
// it for the others; it is cancelled when its last waiter leaves.
type flight struct {
	cancel  context.CancelFunc
	waiters int // guarded by flights.mu

	// unary result, set before done is closed
	done chan struct{}
	resp *detourv1.CompleteResponse

	// Stream state, guarded by mu (taken after flights.mu, never before).
	// While the chunks fit in an entry (Config.MaxEntryBytes) every chunk
	// is held, for the cache and for callers that join late. Once they do
	// not (overflow), the flight leaves the map (no caller joins it any
	// more), will not be stored, and holds only the chunks a reader has yet
	// to read, about MaxEntryBytes at most: past that the upstream waits for
	// the slowest reader, as it would for one caller without the cache.
	mu       sync.Mutex
	chunks   []*detourv1.CompleteChunk // held; chunks[0] is chunk number base
	sizes    []int                     // proto.Size of each held chunk
	base     int                       // chunks dropped from the front
	bytes    int64                     // the sum of sizes
	overflow bool
	readers  []*reader     // the callers reading the stream
	changed  chan struct{} // closed and replaced when chunks grow or the stream ends
	drained  chan struct{} // closed and replaced when held chunks are dropped
	ended    bool
	err      error
}

// reader is one caller's place in a streamed flight: the number of the
// next chunk it reads. Guarded by flight.mu.
type reader struct{ next int }

// join returns the flight for k in m, starting one with run if there is
// none; the caller is counted as a waiter and, for a stream flight, given a
// reader at the first chunk (nil otherwise). It returns nil once the cache
// is closed.
func (c *Cache) join(m map[flightKey]*flight, ctx context.Context, k flightKey, stream bool, run func(ctx context.Context, f *flight)) (*flight, *reader) {
	fs := &c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return nil, nil
	}
	f := m[k]
	if f != nil {
		f.waiters++
		c.coalesced.Add(1)
		return f, f.addReader(stream)
	}
	// The shared call keeps the first caller's values (credentials,
	// tracing) but not its deadline or cancellation.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.coalesceTimeout())
	f = &flight{cancel: cancel, waiters: 1, done: make(chan struct{}), changed: make(chan struct{}), drained: make(chan struct{})}
	m[k] = f
	r := f.addReader(stream)
	c.wg.Add(1) // under flights.mu, which Close takes before it waits
	go func() {
		defer c.wg.Done()
		defer cancel()
		run(fctx, f)
	}()
	return f, r
}

// addReader registers a reader at the first chunk when stream is set. It
// runs under flights.mu while f is in the map: a flight leaves the map
// before it drops a chunk (see hold), so a reader never starts before
// what is held.
func (f *flight) addReader(stream bool) *reader {
	if !stream {
		return nil
	}
	r := &reader{}
	f.mu.Lock()
	f.readers = append(f.readers, r)
	f.mu.Unlock()
	return r
}

// spawn runs fn on a goroutine Close waits for, unless the cache is
// closed.
func (c *Cache) spawn(fn func()) bool {
	fs := &c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// leave uncounts a waiter that gave up, and its reader r (nil for a unary
// flight); the last one cancels the call and forgets it, so that a later
// caller starts afresh rather than joining a cancelled call.
func (c *Cache) leave(m map[flightKey]*flight, k flightKey, f *flight, r *reader) {
	fs := &c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if r != nil {
		f.mu.Lock()
		for i, o := range f.readers {
			if o == r {
				f.readers = append(f.readers[:i], f.readers[i+1:]...)
				break
			}
		}
		f.drop()
		f.mu.Unlock()
	}
	f.waiters--
	if f.waiters == 0 {
		f.cancel()
		if m[k] == f {
			delete(m, k)
		}
	}
}

// forget removes a flight from the map so that later callers read the
// cache, or start their own call.
func (c *Cache) forget(m map[flightKey]*flight, k flightKey, f *flight) {
	c.flights.mu.Lock()
	defer c.flights.mu.Unlock()
	if m[k] == f {
		delete(m, k)
	}
}

// Do returns fn's answer to p's request. When p is Cacheable, identical
// concurrent calls share one call of fn: it runs on its own goroutine, under
// a context that keeps the first caller's values but has its own deadline
// (Config.CoalesceTimeout) and is cancelled when every caller waiting for it
// has gone. Each caller waits until the answer or the end of its own ctx,
// whichever comes first, and gets its own copy of the answer, which is
// stored (see Put) before any caller gets it.
//
// When p is not Cacheable, Do just calls fn(ctx). fn should set the
// response's Source: only live answers are stored.
func (c *Cache) Do(ctx context.Context, p Plan, fn func(ctx context.Context) (*detourv1.CompleteResponse, error)) (*detourv1.CompleteResponse, error) {
	if !p.Cacheable {
		return fn(ctx)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k := flightKeyOf(ctx, p)
	f, _ := c.join(c.flights.unary, ctx, k, false, func(ctx context.Context, f *flight) {
		resp, err := call(ctx, fn)
		if err == nil {
			c.Put(p, resp)
		}
		c.forget(c.flights.unary, k, f)
		f.resp, f.err = resp, err
		close(f.done)
	})
	if f == nil {
		return nil, errClosed
	}
	select {
	case <-f.done:
		if f.err != nil {
			return nil, f.err
		}
		return proto.CloneOf(f.resp), nil
	case <-ctx.Done():
		c.leave(c.flights.unary, k, f, nil)
		return nil, ctx.Err()
	}
}

// call runs fn, turning a panic into an error: fn runs on a goroutine of
// the cache's, where a panic would end the process.
func call(ctx context.Context, fn func(ctx context.Context) (*detourv1.CompleteResponse, error)) (resp *detourv1.CompleteResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cache: shared call panicked: %v", r)
		}
	}()
	return fn(ctx)
}

// Stream sends the chunks of fn's streamed answer to p's request to send.
// When p is Cacheable, identical concurrent calls share one call of fn as in
// Do: fn's chunks are kept in order and every caller receives all of them,
// from the first, at its own pace; a caller whose ctx ends or whose send
// fails leaves without disturbing the others. Stream returns fn's error
// after the chunks fn sent before it, nil after a complete stream (which is
// then stored, see PutStream), send's error, or ctx's.
//
// A stream whose chunks outgrow Config.MaxEntryBytes is never stored: from
// then on the cache keeps only what its callers have yet to read (about
// MaxEntryBytes), and a caller that comes later starts its own call, so
// that an upstream streaming without end holds bounded memory.
//
// fn must send chunks only through the send it is given, which fails only
// once the shared call is cancelled. It does not block while the stream
// fits in an entry; past that, it waits while its callers have more than
// MaxEntryBytes left to read. When p is not Cacheable, Stream just calls
// fn(ctx, send).
func (c *Cache) Stream(ctx context.Context, p Plan, fn func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error, send func(*detourv1.CompleteChunk) error) error {
	if !p.Cacheable {
		return fn(ctx, send)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	limit := int64(c.cfg.maxEntryBytes())
	k := flightKeyOf(ctx, p)
	f, r := c.join(c.flights.streams, ctx, k, true, func(ctx context.Context, f *flight) {
		err := callStream(ctx, fn, func(ch *detourv1.CompleteChunk) error {
			return c.hold(ctx, k, f, ch, limit)
		})
		f.mu.Lock()
		store, chunks := err == nil && !f.overflow, f.chunks
		f.mu.Unlock()
		if store {
			c.PutStream(p, chunks) // fn has returned: chunks no longer grow
		}
		c.forget(c.flights.streams, k, f)
		f.mu.Lock()
		f.ended, f.err = true, err
		close(f.changed)
		f.mu.Unlock()
	})
	if f == nil {
		return errClosed
	}
	for {
		f.mu.Lock()
		chunks, ended, err, changed := f.chunks[r.next-f.base:], f.ended, f.err, f.changed
		f.mu.Unlock()
		for _, ch := range chunks {
			if err := send(proto.CloneOf(ch)); err != nil {
				c.leave(c.flights.streams, k, f, r)
				return err
			}
		}
		if len(chunks) > 0 {
			f.mu.Lock()
			r.next += len(chunks)
			f.drop()
			f.mu.Unlock()
		}
		if ended {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			c.leave(c.flights.streams, k, f, r)
			return ctx.Err()
		}
	}
}

// hold adds a chunk of f's upstream stream for its readers. Once the held
// chunks pass limit it takes f out of the map (first: see addReader), marks
// it overflowed and, from then on, waits while the readers have more than
// limit bytes left to read.
func (c *Cache) hold(ctx context.Context, k flightKey, f *flight, ch *detourv1.CompleteChunk, limit int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	size := proto.Size(ch)
	f.mu.Lock()
	f.chunks = append(f.chunks, ch)
	f.sizes = append(f.sizes, size)
	f.bytes += int64(size)
	close(f.changed)
	f.changed = make(chan struct{})
	overflowing := !f.overflow && f.bytes > limit
	f.mu.Unlock()
	if overflowing {
		c.forget(c.flights.streams, k, f)
		f.mu.Lock()
		f.overflow = true
		f.drop()
		f.mu.Unlock()
	}
	for {
		f.mu.Lock()
		full, drained := f.overflow && f.bytes > limit, f.drained
		f.mu.Unlock()
		if !full {
			return nil
		}
		select {
		case <-drained:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// drop releases the chunks of an overflowed flight that every reader has
// read, and wakes the upstream waiting in hold. It runs under f.mu.
func (f *flight) drop() {
	if !f.overflow {
		return
	}
	low := f.base + len(f.chunks)
	for _, r := range f.readers {
		low = min(low, r.next)
	}
	k := low - f.base
	if k <= 0 {
		return
	}
	for i := range k {
		f.bytes -= int64(f.sizes[i])
		f.chunks[i] = nil // a reader's earlier view of the slice starts after these
	}
	f.chunks, f.sizes, f.base = f.chunks[k:], f.sizes[k:], low
	close(f.drained)
	f.drained = make(chan struct{})
}

func callStream(ctx context.Context, fn func(context.Context, func(*detourv1.CompleteChunk) error) error, send func(*detourv1.CompleteChunk) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cache: shared stream panicked: %v", r)
		}
	}()
	return fn(ctx, send)
}
