// Package spend meters tokens and money per tenant: what each upstream call
// spent (counted per backend, model and tenant, and priced by the config's
// spend.prices), what the cache saved, and each tenant's token rate (tpm)
// and budget per day or month, held across the replicas through Redis.
//
// A call is metered in three steps, by the router:
//
//	res, err := meter.Reserve(tenant, req) // before the call may be shared: its estimate
//	if err != nil {
//		return err // a *LimitError: over the token rate, or the budget is spent
//	}
//	defer res.Release() // whatever the outcome
//	// ... once per upstream call that answered, however many callers shared it:
//	meter.Charge(tenant, req.GetModel(), backend, spend.TokensOf(resp.GetUsage()))
//	// ... for a caller served without an upstream call of its own:
//	meter.Save(tenant, req.GetModel(), backend, spend.TokensOf(hit.GetUsage()))
//
// Reserve sets aside the call's estimate (estimate.go: about 4 bytes a
// prompt token, and max_tokens or spend.completion_estimate for the
// answer); Release gives it back and Charge counts what the provider
// reported, so the limits count real usage and the estimate only decides
// what may start. A call that failed is released and charged nothing; a
// stream cut mid-way is charged its prompt estimate and the text it
// streamed.
//
// With Redis (a fleet.Store) a limit is the fleet's: each replica leases
// units of it ahead of need, sized to its recent demand, reserves calls
// from the lease locally, and settles (charges, releases, the unreserved
// rest of an ended lease) with its next lease request, so a call pays no
// Redis round trip in the steady state. A token rate is GCRA on Redis's
// clock; a budget is a count per calendar period (UTC). The usage counters
// go to Redis by the hour, for reports (Meter.Report) of the whole fleet.
// Without Redis, or while it does not answer, each replica holds its share
// of every limit (1/fleet.Config.Replicas) on its own, and reports its own
// counters.
package spend
