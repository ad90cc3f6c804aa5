package capacity

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/detour-dev/detour/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fixed returns a Limiter with a fixed limit of n (nothing learned) on a
// manual clock.
func fixed(n int) (*Limiter, *manualClock) {
	clk := newManualClock(t0)
	return New(Settings{Max: n, Disabled: true}, WithClock(clk)), clk
}

func TestTryAcquireUpToTheLimit(t *testing.T) {
	l, _ := fixed(2)
	p1, ok1 := l.TryAcquire()
	p2, ok2 := l.TryAcquire()
	_, ok3 := l.TryAcquire()
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("TryAcquire x3 = %v %v %v, want true true false", ok1, ok2, ok3)
	}
	if got := l.Room(); got != 0 {
		t.Errorf("Room() = %d at the limit, want 0", got)
	}
	p1.Done(Success)
	p1.Done(Success) // twice: ignored
	if got := l.Room(); got != 1 {
		t.Errorf("Room() = %d after one Done, want 1", got)
	}
	p2.Done(Dropped)
	if got := l.Stats().InFlight; got != 0 {
		t.Errorf("InFlight = %d, want 0", got)
	}
}

// TestBusyAnswerHoldsItsSlot: a busy answer keeps its slot for about one
// call's duration (the answered calls' average), so a full backend is not
// asked again at once.
func TestBusyAnswerHoldsItsSlot(t *testing.T) {
	clk := newManualClock(t0)
	l := New(Settings{Initial: 1, Max: 1}, WithClock(clk))
	p, _ := l.TryAcquire()
	clk.Advance(40 * time.Millisecond)
	p.Done(Success) // calls take 40 ms
	p, ok := l.TryAcquire()
	if !ok {
		t.Fatal("no slot after a success")
	}
	p.Done(Busy)
	if _, ok := l.TryAcquire(); ok {
		t.Fatal("a slot right after a busy answer, want it held")
	}
	if st := l.Stats(); st.Held != 1 {
		t.Errorf("Held = %d, want 1", st.Held)
	}
	clk.Advance(39 * time.Millisecond)
	if l.Room() != 0 {
		t.Error("slot free before the hold ended")
	}
	clk.Advance(time.Millisecond)
	if l.Room() != 1 {
		t.Error("slot still held after one call's duration")
	}
}

// TestQueueServesClassesInTurn: waiting calls get freed slots round-robin
// across classes (tenants), in arrival order within one; nobody barges in
// ahead of a waiting call.
func TestQueueServesClassesInTurn(t *testing.T) {
	l, _ := fixed(1)
	hold, _ := l.TryAcquire()
	type grant struct {
		who string
		p   *Permit
	}
	granted := make(chan grant, 4)
	enqueue := func(who, class string, want int) {
		go func() {
			p, err := l.Acquire(context.Background(), class, time.Hour)
			if err != nil {
				t.Errorf("%s: Acquire = %v", who, err)
				granted <- grant{who: who}
				return
			}
			granted <- grant{who, p}
		}()
		testkit.Until(t, 5*time.Second, who+" queued", func() bool { return l.Stats().Queued == want })
	}
	enqueue("a1", "a", 1)
	enqueue("a2", "a", 2)
	enqueue("a3", "a", 3)
	enqueue("b1", "b", 4)
	if _, ok := l.TryAcquire(); ok {
		t.Fatal("TryAcquire barged in ahead of waiting calls")
	}
	var order []string
	hold.Done(Success)
	for range 4 {
		g := <-granted
		order = append(order, g.who)
		if g.p != nil {
			g.p.Done(Success)
		}
	}
	if diff := cmp.Diff([]string{"a1", "b1", "a2", "a3"}, order); diff != "" {
		t.Errorf("grant order (-want +got):\n%s", diff)
	}
}

// TestAcquireRefusesAtOnce: a call that could not get a slot within the
// wait it may afford is refused at once with the estimated wait, not after
// waiting for nothing; so is one beyond the queue's bound.
func TestAcquireRefusesAtOnce(t *testing.T) {
	clk := newManualClock(t0)
	l := New(Settings{Initial: 1, Max: 1, QueueFactor: 1}, WithClock(clk))
	p, _ := l.TryAcquire()
	clk.Advance(time.Second)
	p.Done(Success) // calls take 1 s
	hold, _ := l.TryAcquire()
	defer hold.Done(Dropped)

	_, err := l.Acquire(context.Background(), "", 100*time.Millisecond)
	var full *FullError
	if !errors.As(err, &full) || !errors.Is(err, ErrFull) {
		t.Fatalf("Acquire = %v, want a *FullError", err)
	}
	if full.Wait != time.Second {
		t.Errorf("estimated wait %v, want 1s (one call's duration for one slot)", full.Wait)
	}
	if _, err := l.Acquire(context.Background(), "", 0); !errors.Is(err, ErrFull) {
		t.Errorf("Acquire with no wait = %v, want ErrFull", err)
	}

	// Fill the queue (16 at least), then one more is refused.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, minQueue)
	for i := range minQueue {
		go func() {
			_, err := l.Acquire(ctx, "", time.Hour)
			done <- err
		}()
		testkit.Until(t, 5*time.Second, "queued", func() bool { return l.Stats().Queued == i+1 })
	}
	if _, err := l.Acquire(context.Background(), "", time.Hour); !errors.Is(err, ErrFull) {
		t.Errorf("Acquire beyond the queue bound = %v, want ErrFull", err)
	}
	cancel()
	for range minQueue {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("canceled waiter: %v, want context.Canceled", err)
		}
	}
	if q := l.Stats().Queued; q != 0 {
		t.Errorf("Queued = %d after every waiter left, want 0", q)
	}
}

// TestAcquireWaitRunsOut: a waiting call that gets no slot within its wait
// is refused, leaves the queue, and the slot it did not get is not lost.
func TestAcquireWaitRunsOut(t *testing.T) {
	l, clk := fixed(1)
	hold, _ := l.TryAcquire()
	errc := make(chan error, 1)
	go func() {
		_, err := l.Acquire(context.Background(), "", 200*time.Millisecond)
		errc <- err
	}()
	testkit.Until(t, 5*time.Second, "queued", func() bool { return l.Stats().Queued == 1 })
	clk.Advance(200 * time.Millisecond)
	if err := <-errc; !errors.Is(err, ErrFull) {
		t.Fatalf("Acquire = %v after its wait, want ErrFull", err)
	}
	hold.Done(Success)
	if l.Room() != 1 || l.Stats().Queued != 0 {
		t.Errorf("Room %d, Queued %d; want the slot free and nobody waiting", l.Room(), l.Stats().Queued)
	}
}

// TestHeldSlotWakesAWaiter: a call waiting behind a slot held by a busy
// answer gets it when the hold ends.
func TestHeldSlotWakesAWaiter(t *testing.T) {
	clk := newManualClock(t0)
	l := New(Settings{Initial: 1, Max: 1}, WithClock(clk))
	p, _ := l.TryAcquire()
	clk.Advance(50 * time.Millisecond)
	p.Done(Success)
	p, _ = l.TryAcquire()
	p.Done(Busy) // held for 50 ms
	got := make(chan *Permit, 1)
	go func() {
		p, err := l.Acquire(context.Background(), "", time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	testkit.Until(t, 5*time.Second, "queued", func() bool { return l.Stats().Queued == 1 })
	clk.Advance(50 * time.Millisecond)
	(<-got).Done(Success)
}

func TestSettingsDefaults(t *testing.T) {
	got := Settings{}.withDefaults()
	want := Settings{Initial: 256, Min: 1, Max: 10000, QueueFactor: 4}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if got := (Settings{Initial: 50, Max: 20}).withDefaults().Initial; got != 20 {
		t.Errorf("Initial above Max = %d, want Max (20)", got)
	}
}

// TestSeedStartsFromTheFleet: a limit that learned nothing starts from
// another replica's; one that learned keeps its own.
func TestSeedStartsFromTheFleet(t *testing.T) {
	l := New(Settings{})
	l.Seed(40)
	if got := l.Limit(); got != 40 {
		t.Errorf("Limit() = %v after Seed(40), want 40", got)
	}
	if !l.Learned() {
		t.Error("Learned() = false after Seed; a seeded limit is shared on like a learned one")
	}
	l.Seed(80)
	if got := l.Limit(); got != 40 {
		t.Errorf("Limit() = %v after a second Seed, want 40 kept", got)
	}
}

// TestRetryAfterHoldsTheSlotLonger: a busy answer's Retry-After keeps its
// slot held that long (a rate signal), within 4 call durations.
func TestRetryAfterHoldsTheSlotLonger(t *testing.T) {
	clk := newManualClock(t0)
	l := New(Settings{Initial: 1, Max: 1}, WithClock(clk))
	p, _ := l.TryAcquire()
	clk.Advance(50 * time.Millisecond)
	p.Done(Success) // calls take 50 ms
	p, _ = l.TryAcquire()
	p.DoneAfter(Busy, 150*time.Millisecond)
	clk.Advance(149 * time.Millisecond)
	if l.Room() != 0 {
		t.Fatal("slot free before the Retry-After ended")
	}
	clk.Advance(time.Millisecond)
	if l.Room() != 1 {
		t.Fatal("slot still held after the Retry-After")
	}
	p, _ = l.TryAcquire()
	p.DoneAfter(Busy, time.Hour)
	clk.Advance(4 * 50 * time.Millisecond)
	if l.Room() != 1 {
		t.Error("a Retry-After of an hour held the slot past 4 call durations")
	}
}
