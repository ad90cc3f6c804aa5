package breaker_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/detour-dev/detour/breaker"
)

// A backend answers busy twice, the second time with "Retry-After: 10": the
// breaker opens for 10s instead of OpenFor's 5s, then one probe closes it.
func ExampleBreaker() {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	b := breaker.New("deepseek-eu", breaker.Settings{
		ConsecutiveBusy: 2,
		OpenFor:         5 * time.Second,
		HalfOpenProbes:  1,
	},
		breaker.WithClock(func() time.Time { return now }),
		breaker.WithOnChange(func(c breaker.Change) {
			fmt.Printf("%s: %v -> %v\n", c.Backend, c.From, c.To)
		}),
	)

	for _, retryAfter := range []time.Duration{0, 10 * time.Second} {
		done, _ := b.Allow()
		done(breaker.Busy, retryAfter)
	}
	_, err := b.Allow()
	fmt.Println(errors.Is(err, breaker.ErrOpen), b.OpenUntil().Sub(now))

	now = now.Add(10 * time.Second)
	done, err := b.Allow()
	fmt.Println(err, b.State())
	done(breaker.OK, 0)
	fmt.Println(b.State())

	// Output:
	// deepseek-eu: closed -> open
	// true 10s
	// deepseek-eu: open -> half-open
	// <nil> half-open
	// deepseek-eu: half-open -> closed
	// closed
}

// A Set keeps each backend's breaker across config reloads.
func ExampleSet() {
	set := breaker.NewSet(breaker.WithOnChange(nil))
	policy := breaker.Settings{ConsecutiveBusy: 1}

	b := set.Get("eu-1", policy)
	done, _ := b.Allow()
	done(breaker.Busy, 0)

	// A reload that keeps eu-1 with the same policy keeps its open breaker.
	set.Retain([]string{"eu-1"})
	fmt.Println(set.Get("eu-1", policy).State())

	// A reload without eu-1 drops it; if it comes back, it starts closed.
	set.Retain(nil)
	fmt.Println(set.Get("eu-1", policy).State())

	// Output:
	// open
	// closed
}
