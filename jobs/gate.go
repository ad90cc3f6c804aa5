package jobs

import (
	"context"
	"sync"
	"time"
)

// gatePoll is how often the gate looks for spare capacity while runs wait.
const gatePoll = 5 * time.Millisecond

// gate lets a replica's job runs start as spare capacity appears, the
// tenants' runs in turn (one of each waiting tenant, then again), so that
// within a replica a tenant with many jobs does not take every free slot
// from one with a few. Across replicas, each tenant's jobs are fetched from
// a queue of their own (queueOf). It is safe for concurrent use; its one
// goroutine runs only while runs wait.
type gate struct {
	spare func(model string) int

	mu      sync.Mutex
	lines   map[string][]*waiter // per tenant, first come first
	ring    []string             // tenants with waiters, in turn
	next    int                  // index in ring of the tenant served next
	running bool
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

type waiter struct {
	model string
	ch    chan struct{} // closed when the run may go
}

func newGate(spare func(model string) int) *gate {
	return &gate{spare: spare, lines: map[string][]*waiter{}, stop: make(chan struct{})}
}

// wait returns true when a run of tenant for model may start (there was
// spare room for it a moment ago), false after max or when ctx ends.
func (g *gate) wait(ctx context.Context, tenant, model string, max time.Duration) bool {
	if max <= 0 {
		return false
	}
	w := &waiter{model: model, ch: make(chan struct{})}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	if len(g.lines[tenant]) == 0 {
		g.ring = append(g.ring, tenant)
	}
	g.lines[tenant] = append(g.lines[tenant], w)
	if !g.running {
		g.running = true
		g.wg.Add(1)
		go g.loop()
	}
	g.mu.Unlock()
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-w.ch:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-w.ch: // let go as it gave up: take it
		return ctx.Err() == nil
	default:
	}
	g.remove(tenant, w)
	return false
}

// remove takes w out of tenant's line; mu is held.
func (g *gate) remove(tenant string, w *waiter) {
	line := g.lines[tenant]
	for i, x := range line {
		if x == w {
			line = append(line[:i], line[i+1:]...)
			break
		}
	}
	if len(line) > 0 {
		g.lines[tenant] = line
		return
	}
	delete(g.lines, tenant)
	for i, t := range g.ring {
		if t == tenant {
			g.ring = append(g.ring[:i], g.ring[i+1:]...)
			if g.next > i {
				g.next--
			}
			break
		}
	}
	if g.next >= len(g.ring) {
		g.next = 0
	}
}

// loop lets waiters go while there are any.
func (g *gate) loop() {
	defer g.wg.Done()
	tick := time.NewTicker(gatePoll)
	defer tick.Stop()
	for {
		g.mu.Lock()
		if len(g.ring) == 0 || g.closed {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.release()
		g.mu.Unlock()
		select {
		case <-g.stop:
		case <-tick.C:
		}
	}
}

// release lets go, tenant after tenant from the one whose turn it is, as
// many waiters as each model has spare slots; mu is held. A tenant whose
// model has no room keeps its turn.
func (g *gate) release() {
	room := map[string]int{}
	for len(g.ring) > 0 {
		released := false
		for k := range len(g.ring) {
			idx := (g.next + k) % len(g.ring)
			tenant := g.ring[idx]
			w := g.lines[tenant][0]
			n, ok := room[w.model]
			if !ok {
				n = g.spare(w.model)
			}
			if n <= 0 {
				room[w.model] = 0
				continue
			}
			room[w.model] = n - 1
			close(w.ch)
			before := len(g.ring)
			g.remove(tenant, w)
			switch {
			case len(g.ring) == 0:
				g.next = 0
			case len(g.ring) == before:
				g.next = (idx + 1) % len(g.ring) // the next tenant's turn
			default:
				g.next = idx % len(g.ring) // the next tenant moved into idx
			}
			released = true
			break
		}
		if !released {
			return
		}
	}
}

// close lets no more runs wait and stops the loop.
func (g *gate) close() {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.stop)
	}
	g.mu.Unlock()
	g.wg.Wait()
}
