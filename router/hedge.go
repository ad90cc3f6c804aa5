package router

import (
	"context"
	"time"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// hedge makes the call's first attempt and, when it has not answered after
// the policy's hedge delay, a second one in another region (within the retry
// budget, on a backend with room); the first answer wins and the other
// attempt is cancelled, which does not count against its backend. It returns
// (nil, nil) when no attempt answered, leaving the retry loop to go on with
// those backends tried.
func (c *call) hedge(ctx context.Context, try tryFunc) (*attempt, error) {
	r, t := c.r, c.t
	first := c.next(ctx, false)
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
			second := c.hedgeAttempt(first.b.region)
			if second != nil {
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

// hedgeAttempt admits a second attempt on a primary with room outside
// region, within the retry budget; nil when there is none.
func (c *call) hedgeAttempt(region string) *attempt {
	for _, b := range c.candidates() {
		if b.region == region || wasTried(c.tried, b) {
			continue
		}
		if !c.r.budget.retry() {
			return nil
		}
		if a := c.claim(c.ctx, b, detourv1.Source_SOURCE_LIVE, false); a != nil {
			return a
		}
		return nil
	}
	return nil
}

func wasTried(tried []*backend, b *backend) bool {
	for _, x := range tried {
		if x == b {
			return true
		}
	}
	return false
}
