package jobs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/detour-dev/detour/auth"
)

// queues are the tenant queues this replica works on: River fetches each
// queue's jobs apart, Workers at a time. A replica adds a tenant's queue
// when it takes a submission for it or finds unfinished jobs there
// (discover), and drops it after a while without any (retire). It is safe
// for concurrent use.
type queues struct {
	st      *store
	workers int
	log     *slog.Logger

	mu   sync.Mutex
	seen map[string]time.Time // queue -> last time it had unfinished jobs
}

func newQueues(st *store, workers int, log *slog.Logger) *queues {
	return &queues{st: st, workers: workers, log: log, seen: map[string]time.Time{}}
}

// added records q, which the client already works on.
func (qs *queues) added(q string) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	qs.seen[q] = time.Now()
}

// ensure makes the replica work on q.
func (qs *queues) ensure(q string) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if _, ok := qs.seen[q]; ok {
		qs.seen[q] = time.Now()
		return
	}
	err := qs.st.client.Queues().Add(q, river.QueueConfig{MaxWorkers: qs.workers})
	var dup *river.QueueAlreadyAddedError
	if err != nil && !errors.As(err, &dup) {
		qs.log.Error("jobs: cannot work on a tenant's queue", "queue", q, "err", err)
		return
	}
	qs.seen[q] = time.Now()
}

// discover adds the queues that hold unfinished jobs.
func (qs *queues) discover(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	active, err := qs.st.activeQueues(ctx)
	if err != nil {
		if ctx.Err() == nil {
			qs.log.Warn("jobs: cannot list the tenants with jobs", "err", err)
		}
		return
	}
	for _, q := range active {
		if isTenantQueue(q) {
			qs.ensure(q)
		}
	}
}

// retire stops working on queues that had no unfinished job for idle. The
// default tenant's queue stays: the client needs one.
func (qs *queues) retire(ctx context.Context, idle time.Duration) {
	qs.mu.Lock()
	var old []string
	for q, at := range qs.seen {
		if time.Since(at) > idle && q != queueOf(auth.DefaultTenant) {
			old = append(old, q)
		}
	}
	qs.mu.Unlock()
	if len(old) == 0 {
		return
	}
	active, err := qs.st.activeQueues(ctx)
	if err != nil {
		return
	}
	busy := map[string]bool{}
	for _, q := range active {
		busy[q] = true
	}
	qs.mu.Lock() // held while removing: ensure must not see a queue half gone
	defer qs.mu.Unlock()
	for _, q := range old {
		at, ok := qs.seen[q]
		if !ok || time.Since(at) <= idle {
			continue // a submission came meanwhile
		}
		if busy[q] {
			qs.seen[q] = time.Now()
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := qs.st.client.Queues().Remove(rctx, q)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				qs.log.Warn("jobs: cannot stop working on an idle tenant's queue", "queue", q, "err", err)
			}
			continue
		}
		delete(qs.seen, q)
	}
}
