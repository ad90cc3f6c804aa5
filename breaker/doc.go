// Package breaker classifies upstream outcomes (ok, busy, down, failed,
// client error, canceled) and keeps one circuit breaker per backend,
// wrapping github.com/sony/gobreaker/v2. The breaker is for dead backends:
// a few down or failed answers in a row open it, busy answers only when
// practically every call is busy (a busy backend is capacity, left to its
// adaptive limit in package capacity).
//
// A call goes through a backend's Breaker in two steps:
//
//	b := set.Get(backend.Name, breaker.Settings{}) // same *Breaker across reloads
//	done, err := b.Allow()
//	if err != nil { // errors.Is(err, breaker.ErrOpen): skip this backend
//		hint := b.OpenUntil() // for a RetryInfo, when not zero
//		...
//	}
//	resp, err := call(ctx)
//	class := breaker.Classify(err)
//	if ctx.Err() != nil { // the caller's own deadline or cancellation
//		class = breaker.Canceled
//	}
//	done(class, breaker.RetryAfter(err))
//
// Down and Failed answers count against the backend, and so do Busy ones
// toward BusyRatio; OK answers count for it; Client errors and the caller's
// own cancellation are not counted at all.
package breaker
