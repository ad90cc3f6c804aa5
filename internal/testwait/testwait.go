// Package testwait is the tests' one way to wait for a condition: poll it
// until it holds, and fail the test with what was awaited once a deadline
// passes. Tests wait on conditions, never on a fixed sleep.
package testwait

import (
	"testing"
	"time"
)

// Until polls cond every millisecond until it returns true, and fails t
// (t.Fatalf) when timeout passes first, naming what was awaited.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}
