package jobs

import (
	"context"
	"sync"
	"time"

	"github.com/detour-dev/detour/metrics"
)

// countsEvery is how old the fleet-wide counts may be.
const countsEvery = time.Second

// counts are the fleet-wide counts of unfinished jobs, read from the
// database at most once per countsEvery, for the metrics and the tenants'
// limits; the submissions this replica made since are added to a tenant's.
// It is safe for concurrent use.
type counts struct {
	st *store

	mu     sync.Mutex
	at     time.Time
	groups []groupRow
	tenant map[string]int // unfinished jobs per tenant at the reading
	since  map[string]int // submissions here since the reading
}

func newCounts(st *store) *counts {
	return &counts{st: st, tenant: map[string]int{}, since: map[string]int{}}
}

// refresh reads the counts again when they are older than countsEvery;
// mu is held. A failed reading keeps the last one.
func (c *counts) refresh(ctx context.Context) {
	if time.Since(c.at) < countsEvery {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	g, err := c.st.groups(ctx)
	c.at = time.Now()
	if err != nil {
		return
	}
	c.groups = g
	c.tenant = map[string]int{}
	for _, r := range g {
		c.tenant[r.tenant] += r.n
	}
	clear(c.since)
}

// unfinished returns the tenant's unfinished jobs, fleet-wide.
func (c *counts) unfinished(ctx context.Context, tenant string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refresh(ctx)
	return c.tenant[tenant] + c.since[tenant]
}

// submitted counts a submission made here.
func (c *counts) submitted(tenant string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.since[tenant]++
}

// metrics is the job gauges' reading.
func (c *counts) metrics() metrics.JobStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refresh(context.Background())
	type key struct{ tenant, class string }
	by := map[key]*metrics.JobGroup{}
	var st metrics.JobStats
	for _, r := range c.groups {
		k := key{r.tenant, classLabel(r.priority)}
		g := by[k]
		if g == nil {
			st.Groups = append(st.Groups, metrics.JobGroup{Tenant: k.tenant, Class: k.class})
			g = &st.Groups[len(st.Groups)-1]
			by[k] = g
		}
		if r.state == "running" {
			g.Running += float64(r.n)
			continue
		}
		g.Queued += float64(r.n)
		g.OldestQueued = max(g.OldestQueued, r.oldest)
	}
	return st
}
