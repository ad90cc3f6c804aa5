// Package fleet shares state between detour's replicas through Redis: which
// backends are cooling down after a breaker opened, and how much of each
// backend's qps the fleet has spent.
//
// Redis is optional and never on the critical path of an answer. A Store
// bounds every operation with a short timeout and, after a failure, leaves
// Redis alone for a backoff period; during it each replica uses only what it
// knows itself (its own breakers, its share of each qps limit). No caller
// ever sees an error caused by Redis alone; an operator is told by a
// Monitor, which checks Redis every second and logs each change.
//
//	store, err := fleet.Open(cfg.Redis) // nil Store when no Redis is configured
//	if err != nil {
//		return err
//	}
//	defer store.Close()
//	health := fleet.NewMonitor(store) // logs when Redis stops and starts answering
//	defer health.Close()
//	cooldowns := fleet.NewCooldowns(store)
//	defer cooldowns.Close()
//	limits := fleet.NewLimiter(store, 0) // 0: cfg.Redis.Replicas
//	defer limits.Close()
//
//	// A breaker's change hook shares its openings (Publish never blocks):
//	//	if c.To == breaker.Open { cooldowns.Publish(c.Backend, c.OpenUntil) }
//
//	// On the hot path, before a backend's breaker:
//	if !cooldowns.OpenUntil(name).IsZero() {
//		// another replica found it busy: skip it
//	}
//	if ok, wait := limits.Allow(ctx, name, qps); !ok {
//		// the fleet spent the backend's qps: skip it, retry hint wait
//	}
//
// Cooldowns travel as changes, not as per-call state: a breaker that opens
// publishes "open until T" once, and every replica keeps the fleet's
// cooldowns in memory, so checking one costs an atomic load instead of the
// Redis round trips (and the distributed lock) that sharing the whole breaker
// state on every call would cost. The limiter books calls in Redis (GCRA on
// Redis's clock) in small leases requested ahead of need, so a steady caller
// pays a local token take, and Redis sees about one script call per lease.
package fleet
