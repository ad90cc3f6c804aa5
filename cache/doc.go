// Package cache answers repeated LLM requests without calling upstream: a
// local in-memory tier bounded by bytes, an optional shared tier in the
// fleet's Redis, stale-if-error, and coalescing of identical concurrent
// requests into one upstream call.
//
// What is cached (Cache.Plan): deterministic requests, i.e. temperature 0,
// or temperature unset when Config.Deterministic says the backends default
// to deterministic answers; a request's force_cache hint opts in, no_cache
// opts out of everything (lookup, store, coalescing). Answers are keyed by
// KeyOf: the model, the messages and every sampling parameter that changes
// the answer, not routing or cache hints. An answer is fresh for Config.TTL
// (or the request's ttl hint) and kept for Config.StaleWindow more, during
// which only GetStale serves it, marked STALE_CACHE, to a request whose
// max_stale allows it. Only live answers are stored, not fallback ones, and
// only finished ones: with a finish reason and some content (an answer cut
// short, or one that says nothing, is served to its caller but never
// again). A streamed answer that outgrows Config.MaxEntryBytes is relayed
// whole but not kept: the cache then holds only what its callers have yet
// to read.
//
// The router's path through the cache (steps 1, 2 and 6 of DESIGN.md):
//
//	p := c.Plan(req)
//	if hit, ok := c.Get(ctx, p); ok { // 1. fresh answer
//		return hit.Response(), nil // source CACHE, age set, attempts 0
//	}
//	resp, err := c.Do(ctx, p, func(ctx context.Context) (*detourv1.CompleteResponse, error) {
//		return route(ctx, req) // 2. one upstream call for identical requests; 3-5 inside
//	})
//	if err != nil && everythingFailed(err) {
//		if hit, ok := c.GetStale(ctx, p); ok { // 6. stale-if-error
//			return hit.Response(), nil // source STALE_CACHE
//		}
//	}
//	return resp, err
//
// Streams go the same way with Hit.Replay and Cache.Stream; a completed
// stream is stored chunk by chunk and replayed as it came.
//
// Redis is never needed for an answer: every Redis operation is bounded by
// Config.RedisTimeout and guarded by the fleet.Store's backoff, and a Redis
// that is down, slow or flapping makes the shared tier miss (reads) or do
// nothing (writes, which run in the background).
package cache
