package provider

import (
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/internal/hostile"
)

// setBodyBudget sets the process budget for the test, and checks at its
// end that every byte was given back.
func setBodyBudget(t *testing.T, n int64) {
	t.Helper()
	SetBodyBudget(n)
	t.Cleanup(func() {
		SetBodyBudget(0)
		if h := BodyBytesHeld(); h != 0 {
			t.Errorf("%d upstream body bytes still held after the test", h)
		}
	})
}

// heapPeak samples the bytes of live and unswept heap objects until stop
// is called, and returns the highest sample.
func heapPeak() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	done := make(chan struct{})
	var peak uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// TestHugeBodiesStayInTheBodyBudget: 20 calls at once to an upstream
// answering 200 MB bodies. Each call alone may read up to the per-call cap
// (16 MiB); together they may hold no more than the process budget (8 MiB
// here), so the heap stays far below 20 x 16 MiB, every call fails with a
// Failed error (tried elsewhere, counted against the backend) and the
// budget is whole again afterwards.
func TestHugeBodiesStayInTheBodyBudget(t *testing.T) {
	const budget = 8 << 20
	setBodyBudget(t, budget)
	o := serveHostile(t, "", hostile.HugeBody(200<<20))
	const calls = 20
	stop := heapPeak()
	errs := make(chan error, calls)
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			_, err := o.Complete(t.Context(), userRequest("hi"))
			errs <- err
		})
	}
	wg.Wait()
	peak := stop()
	close(errs)
	for err := range errs {
		errCheck{class: breaker.Failed}.check(t, err)
	}
	// The budget, what growing buffers leave for the collector, and the
	// test's own heap: far below the 320 MiB the calls could hold alone.
	if limit := uint64(96 << 20); peak > limit {
		t.Errorf("heap peaked at %d MiB, want <= %d MiB", peak>>20, limit>>20)
	}
	t.Logf("heap peak %d MiB", peak>>20)
}

// TestBodyBudgetRefusal: a body the budget cannot hold is an error
// wrapping ErrBodyBudget, class Failed, and holds nothing afterwards.
func TestBodyBudgetRefusal(t *testing.T) {
	setBodyBudget(t, 64<<10)
	o := serveHostile(t, "", hostile.HugeBody(1<<20))
	_, err := o.Complete(t.Context(), userRequest("hi"))
	errCheck{class: breaker.Failed, is: ErrBodyBudget, contains: "budget"}.check(t, err)

	// A small answer still fits.
	ok := serveHostile(t, "", hostile.Answer(`{"choices":[{"message":{"content":"fine"},"finish_reason":"stop"}]}`))
	if resp, err := ok.Complete(t.Context(), userRequest("hi")); err != nil || resp.GetContent() != "fine" {
		t.Errorf("small answer: %v, %v", resp, err)
	}
	// A stream's event buffers count too, and are given back at Close; an
	// event the budget cannot hold ends the stream.
	sst := serveHostile(t, "", hostile.Stream(hostile.Delta("x", ""), hostile.Delta(strings.Repeat("y", 100<<10), "stop"), "[DONE]"))
	st, err := sst.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	if BodyBytesHeld() == 0 {
		t.Error("an open stream holds nothing of the budget")
	}
	_, err = st.Recv()
	errCheck{class: breaker.Failed, is: ErrBodyBudget}.check(t, err)
	st.Close()
	if h := BodyBytesHeld(); h != 0 {
		t.Errorf("%d bytes held after Close", h)
	}
}
