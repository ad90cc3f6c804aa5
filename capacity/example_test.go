package capacity_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/detour-dev/detour/capacity"
)

// A backend with room for two calls: the third caller waits for a slot and
// gets it when the first call ends; a fourth that cannot wait is refused at
// once with the estimated wait.
func ExampleLimiter() {
	lim := capacity.New(capacity.Settings{Max: 2, Disabled: true}) // a fixed limit of 2
	a, _ := lim.TryAcquire()
	b, _ := lim.TryAcquire()
	if _, ok := lim.TryAcquire(); !ok {
		fmt.Println("full")
	}
	got := make(chan *capacity.Permit)
	go func() {
		p, _ := lim.Acquire(context.Background(), "tenant-a", time.Minute)
		got <- p
	}()
	for i := 0; lim.Stats().Queued == 0 && i < 5000; i++ {
		time.Sleep(time.Millisecond) // let the waiter queue (at most 5 s)
	}
	a.Done(capacity.Success)
	c := <-got
	fmt.Println("waiter served, in flight:", lim.Stats().InFlight)

	_, err := lim.Acquire(context.Background(), "tenant-b", 0)
	fmt.Println(errors.Is(err, capacity.ErrFull))
	b.Done(capacity.Success)
	c.Done(capacity.Success)
	// Output:
	// full
	// waiter served, in flight: 2
	// true
}
