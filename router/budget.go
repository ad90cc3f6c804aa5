package router

import (
	"sync"
	"time"
)

// budget caps extra upstream calls (retries, hedges, attempts past open
// breakers) to a share of recent requests plus a small floor per
// second, as Finagle's RetryBudget and Linkerd's retry budgets do, so a busy
// storm cannot multiply upstream load. It counts over a sliding window of
// budgetSlots one-second slots. It is safe for concurrent use.
type budget struct {
	now func() time.Time

	mu    sync.Mutex
	ratio float64 // retries allowed per request
	floor float64 // retries allowed per second regardless of traffic
	slots [budgetSlots]budgetSlot
}

const budgetSlots = 10

type budgetSlot struct {
	sec               int64
	requests, retries int64
}

func newBudget(now func() time.Time) *budget {
	return &budget{now: now, ratio: 0.8, floor: 10}
}

// setPolicy changes the ratio and floor, keeping the counts of the window.
func (b *budget) setPolicy(ratio, floor float64) {
	b.mu.Lock()
	b.ratio, b.floor = ratio, floor
	b.mu.Unlock()
}

// slot returns the current slot, clearing it when it holds an older second;
// mu is held.
func (b *budget) slot() *budgetSlot {
	sec := b.now().Unix()
	s := &b.slots[sec%budgetSlots]
	if s.sec != sec {
		*s = budgetSlot{sec: sec}
	}
	return s
}

// request records a new call.
func (b *budget) request() {
	b.mu.Lock()
	b.slot().requests++
	b.mu.Unlock()
}

// retry reports whether one more retry fits the budget, and spends it if so.
func (b *budget) retry() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.slot()
	var reqs, rets int64
	for i := range b.slots {
		if s := &b.slots[i]; cur.sec-s.sec < budgetSlots {
			reqs += s.requests
			rets += s.retries
		}
	}
	if float64(rets) >= b.ratio*float64(reqs)+b.floor*budgetSlots {
		return false
	}
	cur.retries++
	return true
}

// panicAllowed reports whether an attempt past open breakers may be made:
// for a retry the budget was spent already; a first attempt spends it here.
func (b *budget) panicAllowed(retry bool) bool {
	return retry || b.retry()
}

// Stats returns the retries spent and allowed in the current window.
func (b *budget) stats() (spent, allowed float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.slot()
	var reqs, rets int64
	for i := range b.slots {
		if s := &b.slots[i]; cur.sec-s.sec < budgetSlots {
			reqs += s.requests
			rets += s.retries
		}
	}
	return float64(rets), b.ratio*float64(reqs) + b.floor*budgetSlots
}
