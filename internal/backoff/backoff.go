// Package backoff is detour's one formula for waiting before trying again:
// an exponential backoff, capped, with jitter, as in "Exponential Backoff
// And Jitter" (AWS Architecture Blog, 2015). grpc-go's own backoff
// (google.golang.org/grpc/backoff) configures its connections; this is for
// detour's loops.
//
//	bo := backoff.Exponential{Base: 50 * time.Millisecond, Max: 5 * time.Second}
//	for retries := 0; ; retries++ {
//		if err := try(); err == nil {
//			break
//		}
//		sleep(ctx, bo.Equal(retries))
//	}
package backoff

import (
	"math/rand/v2"
	"time"
)

// Exponential is a capped exponential backoff: its ceiling is Base after
// the first failure and doubles with each retry, up to Max. It is a plain
// value, safe for concurrent use; the caller counts the retries.
type Exponential struct {
	// Base is the ceiling of the first wait (retries 0). Zero or negative
	// makes every wait zero.
	Base time.Duration
	// Max caps the ceiling; it should be at least Base (a smaller Max
	// wins).
	Max time.Duration
}

// Ceiling returns Base·2^retries, capped at Max (also where the product
// would overflow). A negative retries counts as 0.
func (e Exponential) Ceiling(retries int) time.Duration {
	if e.Base <= 0 {
		return 0
	}
	retries = max(retries, 0)
	if retries >= 63 || e.Base > e.Max>>retries {
		return e.Max
	}
	return e.Base << retries
}

// Full returns a wait drawn uniformly from [0, Ceiling(retries)]: "full
// jitter", which spreads callers that failed together the most. For
// retries of a call, where a short wait costs nothing.
func (e Exponential) Full(retries int) time.Duration {
	c := e.Ceiling(retries)
	if c <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(c) + 1))
}

// Equal returns a wait drawn uniformly from [Ceiling/2, Ceiling]: "equal
// jitter", never shorter than half the ceiling. For a loop that must not
// spin against something that is down (a reconnect).
func (e Exponential) Equal(retries int) time.Duration {
	c := e.Ceiling(retries)
	if c <= 0 {
		return 0
	}
	return c/2 + rand.N(c/2+1)
}
