// Package capacity finds and holds the working capacity of one upstream
// backend: how many calls it can take at once before it answers busy.
//
// A Limiter is a concurrency limit that learns (see the estimator in
// estimator.go): it grows while the backend answers and shrinks when
// detour's own load is what makes the backend busy, telling that apart from
// a backend that answers a share of all calls busy whatever it is sent
// (which is capacity to use, not a signal to back off). A busy answer keeps
// its slot for about one call's duration (longer for a Retry-After), as the
// call would have, so that a full backend is not asked again at once. Calls
// over the limit may wait in a bounded queue, served in turn across callers.
//
// The package knows nothing of routing: the router asks each candidate's
// Limiter for room, spills to the next candidate when there is none, and
// waits in the queue of the one that frees a slot soonest when no candidate
// has room:
//
//	lim := capacity.New(capacity.Settings{Max: backend.MaxConcurrency})
//	p, ok := lim.TryAcquire()
//	if !ok { // full: try the next candidate, or wait for a slot
//		p, err = lim.Acquire(ctx, tenant, time.Second) // *FullError: refused, with the estimated wait
//	}
//	resp, err := call(ctx)
//	p.DoneAfter(outcomeOf(err), retryAfterOf(err)) // Success, Busy, Failed or Dropped
//
// Why not failsafe-go's adaptivelimiter or adaptivethrottler, which were read
// before this was written: the adaptive limiter steers by execution time
// alone (a gradient of recent to baseline latency), so a backend that answers
// 503 in a millisecond looks fast and healthy to it and its limit grows, and
// the only way to keep a busy answer out is to Drop it, after which it cannot
// learn a concurrency cap at all; it reads the wall clock (no deterministic
// tests) and cannot hold a slot for a Retry-After. The adaptive throttler
// (the SRE book's client-side throttling) rejects locally once requests pass
// K times the accepted ones: a provider that answers half its calls busy at
// random is throttled for any K below 2, and one that is full is still sent
// K times what it accepts. Neither tells random busy answers from the ones
// detour's own load causes, which is the point here.
package capacity
