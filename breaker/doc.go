// Package breaker classifies upstream outcomes (busy, failed, client error,
// canceled) and keeps one circuit breaker per backend, wrapping
// github.com/sony/gobreaker/v2.
//
// A call goes through a backend's Breaker in two steps:
//
//	b := set.Get(backend.Name, cfg.Breaker) // same *Breaker across reloads
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
// Busy and Failed answers count against the backend, OK answers for it;
// Client errors and the caller's own cancellation are not counted at all.
package breaker
