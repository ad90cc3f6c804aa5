// Package router makes detour's routing decision for one call: which backend
// to try, whether to retry elsewhere, when to degrade to a fallback provider,
// and which error to report when nothing can answer.
//
// A Router serves the table built from the latest applied regions.Snapshot;
// Apply swaps it atomically, so a call in flight finishes on the table it
// started with while new calls see the new one.
//
//	rt, err := router.New(snap, router.Options{Region: "eu-west"})
//	resp, err := rt.Complete(ctx, req) // *router.Error (Code, RetryAfter) or a context error
//
// # Files
//
//   - router.go: the Router, its lifecycle (New, Apply, Close) and the cache
//     path of Complete and Stream (step 1-2 and 6 of the path below);
//   - call.go: one routed call: candidates, retries, the budget, fallbacks,
//     the final error (route, call);
//   - attempt.go: one upstream attempt and how its outcome is recorded on
//     the backend's breaker, capacity limit, balancer cost and metrics;
//   - pick.go: the candidates' order (regions as priority levels with the
//     health draw, power of two choices within a region);
//   - table.go, backend.go: the routing table derived from a snapshot and
//     the backends' live state (client, capacity limit, counters);
//   - stream.go, splice.go: relaying a stream (tokens held back until the
//     first, the watchdog of silences, queue and first token, truncation)
//     and a streamed call across its attempts (continuation after a break,
//     the hedge gate);
//   - hedge.go, budget.go, quota.go, state.go: hedged first attempts (unary
//     and streams), the retry budget, tenant quotas, Admin's view;
//   - background.go: background calls (asynchronous jobs), which use only
//     spare capacity and give their slot to an interactive call that needs it.
//
// # The path of one call
//
//  1. admit: the caller's own checks (model served, tenant quota), before
//     anything is shared with another caller;
//  2. cache: a fresh hit answers; identical cacheable calls with the same
//     routing hints share one upstream call;
//  3. route: the first candidate with room under its capacity limit takes an
//     attempt (spill to the next, then to fallbacks; wait in the queue of the
//     one that frees a slot soonest; an attempt past open breakers when every
//     one is open, within the budget);
//  4. a busy, down or failed attempt is retried on the next candidate, after
//     a backoff only when it is a backend the call already tried; a stream
//     is retried until its first token reached the caller, and after that
//     only as a continuation (streams.continuation), which asks the next
//     candidate for the rest of the answer and splices it on;
//  5. fallbacks; 6. a stale cached answer; 7. an *Error with a retry hint.
//
// # Contexts
//
// A call runs under a stack of contexts, each of which can end it:
//
//	caller ctx        the gRPC call: the caller's deadline and cancellation
//	└─ shared call    cacheable calls only: the flight's own context (cache
//	                  package), cache.coalesce_timeout, cancelled when its last
//	                  caller leaves; carries no caller's stats
//	   └─ hedge       hedged first attempts: cancels the losing attempt (a
//	                  stream's loser: once the other sent a token)
//	      └─ span     the attempt's trace span (no deadline of its own)
//	         └─ attempt   the watchdog: the backend's timeout (backends[].timeout
//	                      or retry.attempt_timeout) bounds each silence (paused
//	                      while the caller reads a chunk), queue_timeout the
//	                      wait before the answer starts, first_token_timeout
//	                      a stream's wait for its first token
//
// Which one ended an attempt decides its class (see Router.do and merge):
// the caller's own deadline or cancellation makes it Canceled (neither
// retried nor counted against the backend, and the call returns the
// context's error, which the server maps to DEADLINE_EXCEEDED or CANCELLED);
// the attempt's silence bound makes it Down (the backend did not answer in
// time: retried, counted by the breaker, and if it was the last attempt the
// call fails UNAVAILABLE with a retry hint, never DEADLINE_EXCEEDED); its
// queue and first-token bounds make it Busy (the backend is up but has no
// room for the call now); a cancellation that is neither (a hedge loser) is
// not counted either. Busy and Failed come from the upstream's answer itself
// (breaker.Classify).
package router
