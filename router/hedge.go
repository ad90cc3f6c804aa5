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
func (c *call) hedge(ctx context.Context, after time.Duration, try tryFunc) (*attempt, error) {
	r := c.r
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
	timer := time.NewTimer(after)
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
			second := c.hedgeAttempt(first.b.region, false)
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

// hedgeStream makes a stream's first attempt and, when it has sent no
// token after the hedge delay, a second one on the next candidate (another
// region's first, within the retry budget, on a backend with room). The
// first attempt with a token to send holds the stream (hedgeGate) and the
// other is cancelled at once, which does not count against its backend.
// The attempt that held the stream is merged like any other (it may have
// broken later, and be continued); (nil, nil) lets the retry loop go on.
func (c *call) hedgeStream(ctx context.Context, after time.Duration, try tryFunc) (*attempt, error) {
	r := c.r
	first := c.next(ctx, false)
	if first == nil {
		return nil, nil
	}
	g := &hedgeGate{}
	results := make(chan *attempt, 2)
	launch := func(a *attempt) {
		actx, cancel := context.WithCancel(ctx)
		g.add(a, cancel)
		go func() {
			defer cancel()
			r.do(actx, a, try)
			results <- a
		}()
	}
	launch(first)
	timer := time.NewTimer(after)
	defer timer.Stop()
	var done []*attempt
	var holder *attempt
	for pending := 1; pending > 0; {
		select {
		case a := <-results:
			pending--
			if a == g.won() {
				holder = a
				continue
			}
			done = append(done, a)
		case <-timer.C:
			if g.won() != nil || pending != 1 || len(done) > 0 {
				continue
			}
			if second := c.hedgeAttempt(first.b.region, true); second != nil {
				r.opts.Metrics.Hedge(false)
				pending++
				launch(second)
			}
		}
	}
	for _, a := range done {
		if a.err == errHedgeLost || (holder != nil && a.class == breaker.Canceled) {
			c.upstream += a.elapsed // the loser: cancelled, not a failure
			continue
		}
		if _, err := c.merge(ctx, a); err != nil {
			return nil, err
		}
	}
	if holder != nil {
		if holder != first {
			r.opts.Metrics.Hedge(true)
		}
		return c.merge(ctx, holder)
	}
	return nil, nil
}

// hedgeAttempt admits a second attempt on the first primary with room
// outside region (with sameRegion, in region too when no other has room),
// within the retry budget; nil when there is none.
func (c *call) hedgeAttempt(region string, sameRegion bool) *attempt {
	cands := c.candidates()
	if sameRegion {
		// Other regions first, then the own one.
		others := make([]*backend, 0, len(cands))
		var own []*backend
		for _, b := range cands {
			if b.region == region {
				own = append(own, b)
			} else {
				others = append(others, b)
			}
		}
		cands, region = append(others, own...), ""
	}
	budgeted := false
	for _, b := range cands {
		if (region != "" && b.region == region) || wasTried(c.tried, b) {
			continue
		}
		if !budgeted {
			if !c.r.budget.retry() {
				return nil
			}
			budgeted = true
		}
		if a := c.claim(c.ctx, b, detourv1.Source_SOURCE_LIVE, false); a != nil {
			return a
		}
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
