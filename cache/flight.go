package cache

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// flights are the shared upstream calls in progress, by key. Unary and
// stream calls are kept apart: a unary caller cannot use a half-finished
// stream.
type flights struct {
	mu      sync.Mutex // guards the maps, every flight's waiters, and closing
	closing bool
	unary   map[Key]*flight
	streams map[Key]*flight
}

func (fs *flights) init() {
	fs.unary = map[Key]*flight{}
	fs.streams = map[Key]*flight{}
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

	// stream state
	mu      sync.Mutex
	chunks  []*detourv1.CompleteChunk
	changed chan struct{} // closed and replaced when chunks grow or the stream ends
	ended   bool
	err     error
}

// join returns the flight for k in m, starting one with run if there is
// none; the caller is counted as a waiter. It returns nil once the cache is
// closed.
func (c *Cache) join(m map[Key]*flight, ctx context.Context, k Key, run func(ctx context.Context, f *flight)) *flight {
	fs := &c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closing {
		return nil
	}
	f := m[k]
	if f != nil {
		f.waiters++
		c.coalesced.Add(1)
		return f
	}
	// The shared call keeps the first caller's values (credentials,
	// tracing) but not its deadline or cancellation.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.coalesceTimeout())
	f = &flight{cancel: cancel, waiters: 1, done: make(chan struct{}), changed: make(chan struct{})}
	m[k] = f
	c.wg.Add(1) // under flights.mu, which Close takes before it waits
	go func() {
		defer c.wg.Done()
		defer cancel()
		run(fctx, f)
	}()
	return f
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

// leave uncounts a waiter that gave up; the last one cancels the call and
// forgets it, so that a later caller starts afresh rather than joining a
// cancelled call.
func (c *Cache) leave(m map[Key]*flight, k Key, f *flight) {
	fs := &c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		f.cancel()
		if m[k] == f {
			delete(m, k)
		}
	}
}

// forget removes a finished flight so that later callers read the cache.
func (c *Cache) forget(m map[Key]*flight, k Key, f *flight) {
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
	f := c.join(c.flights.unary, ctx, p.Key, func(ctx context.Context, f *flight) {
		resp, err := call(ctx, fn)
		if err == nil {
			c.Put(p, resp)
		}
		c.forget(c.flights.unary, p.Key, f)
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
		c.leave(c.flights.unary, p.Key, f)
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
// fn must send chunks only through the send it is given, which never blocks
// and fails only once the shared call is cancelled. When p is not Cacheable,
// Stream just calls fn(ctx, send).
func (c *Cache) Stream(ctx context.Context, p Plan, fn func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error, send func(*detourv1.CompleteChunk) error) error {
	if !p.Cacheable {
		return fn(ctx, send)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f := c.join(c.flights.streams, ctx, p.Key, func(ctx context.Context, f *flight) {
		err := callStream(ctx, fn, func(ch *detourv1.CompleteChunk) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			f.mu.Lock()
			f.chunks = append(f.chunks, ch)
			close(f.changed)
			f.changed = make(chan struct{})
			f.mu.Unlock()
			return nil
		})
		if err == nil {
			c.PutStream(p, f.chunks) // fn has returned: chunks no longer grow
		}
		c.forget(c.flights.streams, p.Key, f)
		f.mu.Lock()
		f.ended, f.err = true, err
		close(f.changed)
		f.mu.Unlock()
	})
	if f == nil {
		return errClosed
	}
	sent := 0
	for {
		f.mu.Lock()
		chunks, ended, err, changed := f.chunks[sent:], f.ended, f.err, f.changed
		f.mu.Unlock()
		for _, ch := range chunks {
			if err := send(proto.CloneOf(ch)); err != nil {
				c.leave(c.flights.streams, p.Key, f)
				return err
			}
			sent++
		}
		if ended {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			c.leave(c.flights.streams, p.Key, f)
			return ctx.Err()
		}
	}
}

func callStream(ctx context.Context, fn func(context.Context, func(*detourv1.CompleteChunk) error) error, send func(*detourv1.CompleteChunk) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cache: shared stream panicked: %v", r)
		}
	}()
	return fn(ctx, send)
}
