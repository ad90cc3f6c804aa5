package fleet_test

import (
	"context"
	"fmt"
	"time"

	"github.com/detour-dev/detour/fleet"
)

// Without Redis (a nil Store) cooldowns stay local to the replica: a
// breaker's opening is still seen by OpenUntil until it ends.
func ExampleCooldowns() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	store, _ := fleet.Open(fleet.Config{}) // no Addr: nil Store
	c := fleet.NewCooldowns(store, fleet.WithClock(func() time.Time { return now }))
	defer c.Close()

	c.Publish("deepseek-eu", now.Add(5*time.Second)) // from the breaker's change hook
	fmt.Println(c.OpenUntil("deepseek-eu").Sub(now), c.OpenUntil("deepseek-us").IsZero())
	now = now.Add(5 * time.Second)
	fmt.Println(c.OpenUntil("deepseek-eu").IsZero())

	// Output:
	// 5s true
	// true
}

// Without Redis each replica admits its share of a backend's qps: here 100
// qps over 4 replicas, a burst of 2 then 25 per second.
func ExampleLimiter() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	l := fleet.NewLimiter(nil, 4, fleet.WithClock(func() time.Time { return now }))
	defer l.Close()
	ctx := context.Background()
	for range 3 {
		ok, wait := l.Allow(ctx, "deepseek-eu", 100)
		fmt.Println(ok, wait)
	}
	now = now.Add(40 * time.Millisecond)
	ok, _ := l.Allow(ctx, "deepseek-eu", 100)
	fmt.Println(ok)

	// Output:
	// true 0s
	// true 0s
	// false 40ms
	// true
}
