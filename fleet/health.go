package fleet

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Health checks of a Monitor.
const (
	// checkEvery is how often a Monitor pings Redis.
	checkEvery = time.Second
	// checkTimeout bounds one ping. It is longer than the hot path's
	// Config.Timeout on purpose: Up says whether Redis answers at all, not
	// whether it answered one call within a few milliseconds.
	checkTimeout = time.Second
)

// Health is what a Monitor knows of Redis.
type Health struct {
	// Addr is Redis's host:port.
	Addr string
	// Checked is false until the first health check has ended.
	Checked bool
	// Up: Redis answered the last health check. While it does not, each
	// replica keeps cache, cooldowns and limits to itself.
	Up bool
	// Since is when Up last changed (the first check counts as a change).
	Since time.Time
	// Errors counts the failed Redis operations and health checks of the
	// Store (see Store.Errors); LastError is the last one's error, "" when
	// none failed.
	Errors    uint64
	LastError string
}

// Monitor checks that the fleet's Redis answers, once a second, and says so
// when that changes: a warning when it stops answering (the replica then
// keeps its cache, cooldowns and limits to itself) and when it answers
// again, once per change rather than per failed call. Health reports the
// state for metrics and the Admin service.
//
// A Monitor of a nil Store does nothing and reports a zero Health. Monitor
// is safe for concurrent use; Health never blocks on Redis. NewMonitor
// starts one goroutine when the Store is not nil; Close stops it and waits.
type Monitor struct {
	store *Store
	addr  string
	log   *slog.Logger
	now   func() time.Time
	every time.Duration

	mu    sync.Mutex
	state Health

	cancel context.CancelFunc
	done   chan struct{}
}

// NewMonitor starts checking s: the first check runs at once, in the
// background.
func NewMonitor(s *Store, opts ...Option) *Monitor {
	return newMonitor(s, checkEvery, opts...)
}

// newMonitor is NewMonitor checking every every (tests check faster).
func newMonitor(s *Store, every time.Duration, opts ...Option) *Monitor {
	o := newOptions(opts)
	m := &Monitor{store: s, log: o.log, now: o.now, every: every}
	if s == nil {
		return m
	}
	m.addr, m.state.Addr = s.Addr(), s.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go m.run(ctx)
	return m
}

// Health returns the state as of the last check, with the Store's error
// count as of now.
func (m *Monitor) Health() Health {
	m.mu.Lock()
	h := m.state
	m.mu.Unlock()
	h.Errors, h.LastError = m.store.Errors()
	return h
}

// Close stops the checks and waits for the goroutine. Health still answers
// afterwards, from the last check.
func (m *Monitor) Close() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
}

func (m *Monitor) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		m.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check pings Redis once and logs a change of state.
func (m *Monitor) check(ctx context.Context) {
	err := m.store.Ping(ctx, checkTimeout)
	if ctx.Err() != nil {
		return // closing
	}
	now := m.now()
	up := err == nil
	m.mu.Lock()
	prev := m.state
	if !prev.Checked || prev.Up != up {
		m.state.Checked, m.state.Up, m.state.Since = true, up, now
	}
	m.mu.Unlock()
	addr := m.addr
	switch {
	case prev.Checked && prev.Up == up:
	case up && !prev.Checked:
		m.log.Info("shared state in redis", "addr", addr)
	case up:
		m.log.Warn("redis reachable again: cache, cooldowns and limits are shared again", "addr", addr,
			"down_for", now.Sub(prev.Since).Round(time.Millisecond).String())
	default:
		m.log.Warn("redis unreachable: cache, cooldowns and limits are local to this replica until it answers", "addr", addr, "err", err)
	}
}
