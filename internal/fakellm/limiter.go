package fakellm

import (
	"math"
	"sync/atomic"
	"time"
)

// limiter admits requests at a steady rate with a burst, without a lock: it
// is the generic cell rate algorithm, whose whole state is one atomic word,
// the theoretical arrival time (tat) of the next request at the steady rate.
// A request is admitted if tat does not run more than burst intervals ahead
// of now. Safe for concurrent use; never blocks.
type limiter struct {
	base     time.Time // origin of the monotonic nanoseconds below
	interval int64     // nanoseconds between requests at the steady rate
	ahead    int64     // how far tat may run ahead of now: burst intervals
	tat      atomic.Int64
}

// maxNanos bounds intervals so that sums of them cannot overflow.
const maxNanos = int64(1) << 60

func newLimiter(qps float64, burst int) *limiter {
	if burst <= 0 {
		burst = max(1, int(math.Ceil(qps/10)))
	}
	interval := int64(min(float64(time.Second)/qps, float64(maxNanos)))
	interval = max(interval, 1)
	ahead := int64(min(float64(interval)*float64(burst), float64(maxNanos)))
	return &limiter{base: time.Now(), interval: interval, ahead: ahead}
}

// allow reports whether a request arriving now is admitted, and if so
// accounts for it.
func (l *limiter) allow() bool {
	return l.allowAt(int64(time.Since(l.base)))
}

// allowAt is allow at now nanoseconds after l.base.
func (l *limiter) allowAt(now int64) bool {
	for {
		tat := l.tat.Load()
		next := max(tat, now) + l.interval
		if next-now > l.ahead {
			return false
		}
		if l.tat.CompareAndSwap(tat, next) {
			return true
		}
	}
}
