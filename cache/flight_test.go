package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// upstream is a fake upstream call that counts its calls and answers when
// released.
type upstream struct {
	calls   atomic.Int32
	release chan struct{}
	ctxs    chan context.Context
}

func newUpstream() *upstream {
	return &upstream{release: make(chan struct{}), ctxs: make(chan context.Context, 100)}
}

func (u *upstream) complete(ctx context.Context) (*detourv1.CompleteResponse, error) {
	u.calls.Add(1)
	u.ctxs <- ctx
	select {
	case <-u.release:
		return answer("shared"), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// 100 identical concurrent calls make one upstream call, and each caller
// gets its own copy of the answer.
func TestCoalesce(t *testing.T) {
	c := newCache(t, Config{}, nil)
	u := newUpstream()
	p := c.Plan(request("same"), Caller{})
	const n = 100
	var wg sync.WaitGroup
	results := make([]*detourv1.CompleteResponse, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = c.Do(context.Background(), p, u.complete)
		}()
	}
	eventually(t, "every caller to join", func() bool { return c.Stats().Coalesced == n-1 })
	close(u.release)
	wg.Wait()
	if got := u.calls.Load(); got != 1 {
		t.Errorf("%d upstream calls, want 1", got)
	}
	for i := range n {
		if errs[i] != nil || results[i].GetContent() != "shared" {
			t.Fatalf("caller %d: %v, %v", i, results[i], errs[i])
		}
		if i > 0 && results[i] == results[0] {
			t.Fatal("callers share one response value")
		}
	}
	if _, ok := c.Get(context.Background(), p); !ok {
		t.Error("the shared answer was not stored")
	}
}

// A caller that gives up returns at once with its own error and does not
// cancel the call the others wait for; when the last caller gives up, the
// call is cancelled.
func TestCoalesceCallerCancel(t *testing.T) {
	c := newCache(t, Config{}, nil)
	u := newUpstream()
	p := c.Plan(request("same"), Caller{})

	impatient, giveUp := context.WithCancel(context.Background())
	patient := make(chan error, 1)
	first := make(chan error, 1)
	go func() { _, err := c.Do(impatient, p, u.complete); first <- err }()
	shared := <-u.ctxs
	go func() {
		resp, err := c.Do(context.Background(), p, u.complete)
		if err == nil && resp.GetContent() != "shared" {
			err = fmt.Errorf("content %q", resp.GetContent())
		}
		patient <- err
	}()
	eventually(t, "the second caller to join", func() bool { return c.Stats().Coalesced == 1 })

	giveUp()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v, want context.Canceled", err)
	}
	if err := shared.Err(); err != nil {
		t.Fatalf("shared call cancelled with a caller still waiting: %v", err)
	}
	close(u.release)
	if err := <-patient; err != nil {
		t.Errorf("patient caller: %v", err)
	}

	// Everyone gives up: the shared call ends, and the next caller starts
	// a new one.
	p2 := c.Plan(request("abandoned"), Caller{})
	u2 := newUpstream()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := c.Do(ctx, p2, u2.complete); done <- err }()
	shared = <-u2.ctxs
	cancel()
	<-done
	<-shared.Done()
	close(u2.release)
	if _, err := c.Do(context.Background(), p2, u2.complete); err != nil {
		t.Errorf("call after an abandoned one: %v", err)
	}
	if got := u2.calls.Load(); got != 2 {
		t.Errorf("%d upstream calls, want 2", got)
	}
}

// Errors are shared, not stored; requests that are not cacheable are not
// coalesced.
func TestCoalesceErrorsAndUncacheable(t *testing.T) {
	c := newCache(t, Config{}, nil)
	boom := errors.New("all busy")
	p := c.Plan(request("x"), Caller{})
	_, err := c.Do(context.Background(), p, func(context.Context) (*detourv1.CompleteResponse, error) { return nil, boom })
	if err != boom {
		t.Errorf("Do: %v, want %v", err, boom)
	}
	if _, ok := c.Get(context.Background(), p); ok {
		t.Error("an error was cached")
	}

	r := request("x")
	r.Cache = &detourv1.CacheHints{NoCache: true}
	pn := c.Plan(r, Caller{})
	caller := context.WithValue(context.Background(), ctxKey{}, "caller")
	_, err = c.Do(caller, pn, func(ctx context.Context) (*detourv1.CompleteResponse, error) {
		if ctx != caller {
			return nil, errors.New("not the caller's context")
		}
		return answer("direct"), nil
	})
	if err != nil {
		t.Error(err)
	}
}

type ctxKey struct{}

// Streams coalesce too: every caller receives every chunk, from the first,
// even when it joins late; a caller whose send fails leaves alone.
func TestCoalesceStream(t *testing.T) {
	c := newCache(t, Config{}, nil)
	p := c.Plan(request("stream"), Caller{})
	var calls atomic.Int32
	next := make(chan struct{})
	fn := func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		calls.Add(1)
		for _, d := range []string{"a", "b", "c"} {
			select {
			case <-next:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := send(&detourv1.CompleteChunk{Delta: d, Source: detourv1.Source_SOURCE_LIVE}); err != nil {
				return err
			}
		}
		return nil
	}
	type result struct {
		got string
		err error
	}
	run := func(failAt int) chan result {
		ch := make(chan result, 1)
		go func() {
			var got string
			err := c.Stream(context.Background(), p, fn, func(ch *detourv1.CompleteChunk) error {
				if len(got) == failAt {
					return errors.New("client gone")
				}
				got += ch.GetDelta()
				return nil
			})
			ch <- result{got, err}
		}()
		return ch
	}
	first := run(-1)
	broken := run(1)
	eventually(t, "two stream callers", func() bool { return c.Stats().Coalesced == 1 })
	next <- struct{}{}
	next <- struct{}{}
	late := run(-1)
	eventually(t, "a late stream caller", func() bool { return c.Stats().Coalesced == 2 })
	next <- struct{}{}
	for name, ch := range map[string]chan result{"first": first, "late": late} {
		if r := <-ch; r.got != "abc" || r.err != nil {
			t.Errorf("%s caller: %q, %v; want \"abc\", nil", name, r.got, r.err)
		}
	}
	if r := <-broken; r.got != "a" || r.err == nil {
		t.Errorf("broken caller: %q, %v; want \"a\" and its send error", r.got, r.err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d upstream streams, want 1", n)
	}
}

// Close cancels the shared calls still running and waits for them.
func TestCloseCancelsFlights(t *testing.T) {
	c := New(Config{}, nil)
	u := newUpstream()
	p := c.Plan(request("x"), Caller{})
	done := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), p, u.complete); done <- err }()
	shared := <-u.ctxs
	c.Close()
	if shared.Err() == nil {
		t.Error("shared call still running after Close")
	}
	if err := <-done; err == nil {
		t.Error("caller got no error from a call cancelled by Close")
	}
	if _, err := c.Do(context.Background(), p, u.complete); !errors.Is(err, errClosed) {
		t.Errorf("Do after Close: %v, want errClosed", err)
	}
}

// Each caller keeps its own deadline: one whose deadline passes returns
// DeadlineExceeded while the shared call goes on for the others.
func TestCoalesceCallerDeadline(t *testing.T) {
	c := newCache(t, Config{}, nil)
	u := newUpstream()
	p := c.Plan(request("same"), Caller{})
	patient := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), p, u.complete); patient <- err }()
	shared := <-u.ctxs
	if _, ok := shared.Deadline(); !ok {
		t.Error("the shared call has no deadline of its own")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := c.Do(ctx, p, u.complete); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("caller with a short deadline: %v, want DeadlineExceeded", err)
	}
	if err := shared.Err(); err != nil {
		t.Fatalf("shared call ended with its waiters: %v", err)
	}
	close(u.release)
	if err := <-patient; err != nil {
		t.Errorf("patient caller: %v", err)
	}
	if n := u.calls.Load(); n != 1 {
		t.Errorf("%d upstream calls, want 1", n)
	}
}
