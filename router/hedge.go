package router

import (
	"context"
	"time"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// hedge makes the call's first attempt and, when it has not answered after
// the policy's hedge delay, a second one in another region (within the retry
// budget); the first answer wins and the other attempt is cancelled, which
// does not count against its backend. It returns (nil, nil) when no attempt
// answered, leaving the retry loop to go on with those backends tried.
func (c *call) hedge(ctx context.Context, model, prefer string, try tryFunc) (*attempt, error) {
	r, t := c.r, c.t
	b := t.pick(r.now(), model, prefer, "", r.opts.Zone, c.tried)
	if b == nil {
		return nil, nil
	}
	c.tried = append(c.tried, b)
	first := c.start(b, detourv1.Source_SOURCE_LIVE)
	if first == nil {
		return nil, nil
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan *attempt, 2)
	launch := func(a *attempt) {
		go func() {
			r.do(hctx, a, try)
			results <- a
		}()
	}
	launch(first)
	timer := time.NewTimer(t.policy.hedgeAfter)
	defer timer.Stop()
	var done []*attempt
	var winner *attempt
	for pending := 1; pending > 0; {
		select {
		case a := <-results:
			pending--
			if winner == nil && a.committed && a.class == breaker.OK {
				winner = a
				cancel() // the other attempt loses
				continue
			}
			done = append(done, a)
		case <-timer.C:
			if winner != nil || pending != 1 || len(done) > 0 {
				continue
			}
			b2 := t.pick(r.now(), model, prefer, b.region, r.opts.Zone, c.tried)
			if b2 == nil || b2.region == b.region || !r.budget.retry() {
				continue
			}
			c.tried = append(c.tried, b2)
			if second := c.start(b2, detourv1.Source_SOURCE_LIVE); second != nil {
				r.opts.Metrics.Retry()
				pending++
				launch(second)
			}
		}
	}
	if winner != nil {
		c.upstream += winner.elapsed
		c.last = winner
		return winner, nil
	}
	for _, a := range done {
		if _, err := c.merge(ctx, a); err != nil {
			return nil, err
		}
	}
	return nil, nil
}
