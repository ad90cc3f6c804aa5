package spend

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Retention is how long the usage counters are kept, in Redis and in a
// replica's memory: a report reaches back at most this far.
const Retention = 45 * 24 * time.Hour

// fields are the counters of a usage row, in the order of counts; they
// are the field names in Redis too.
var fields = [...]string{"calls", "prompt", "completion", "cache_hit", "reasoning", "spend", "saved_calls", "saved_tokens", "savings"}

const (
	fCalls = iota
	fPrompt
	fCompletion
	fCacheHit
	fReasoning
	fSpend
	fSavedCalls
	fSavedTokens
	fSavings
)

type counts [len(fields)]float64

func (c *counts) add(o *counts) {
	for i := range c {
		c[i] += o[i]
	}
}

// rowKey is whose usage a row counts: a tenant label and a model label.
type rowKey struct{ tenant, model string }

// usageLog holds the usage counters by hour: all of them (for a report
// without Redis) and those Redis has yet to get. It is safe for concurrent
// use.
type usageLog struct {
	mu      sync.Mutex
	hours   map[int64]map[rowKey]*counts // by the Unix second the hour starts
	pending map[int64]map[rowKey]*counts
}

func hourOf(t time.Time) int64 {
	s := t.Unix()
	return s - s%3600
}

func (l *usageLog) add(now time.Time, k rowKey, c *counts, shared bool) {
	h := hourOf(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hours == nil {
		l.hours, l.pending = map[int64]map[rowKey]*counts{}, map[int64]map[rowKey]*counts{}
	}
	addTo(l.hours, h, k, c, func() {
		for old := range l.hours {
			if old < h-int64(Retention/time.Second) {
				delete(l.hours, old)
			}
		}
	})
	if shared {
		addTo(l.pending, h, k, c, func() {})
	}
}

func addTo(m map[int64]map[rowKey]*counts, h int64, k rowKey, c *counts, newHour func()) {
	rows := m[h]
	if rows == nil {
		newHour()
		rows = map[rowKey]*counts{}
		m[h] = rows
	}
	r := rows[k]
	if r == nil {
		r = &counts{}
		rows[k] = r
	}
	r.add(c)
}

// takePending returns the counters Redis has yet to get, and forgets them.
func (l *usageLog) takePending() map[int64]map[rowKey]*counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.pending
	if len(p) > 0 {
		l.pending = map[int64]map[rowKey]*counts{}
	}
	return p
}

// putBack returns counters a failed write did not store.
func (l *usageLog) putBack(p map[int64]map[rowKey]*counts) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for h, rows := range p {
		for k, c := range rows {
			addTo(l.pending, h, k, c, func() {})
		}
	}
}

// local sums the hours from since on.
func (l *usageLog) local(since int64) map[rowKey]*counts {
	out := map[rowKey]*counts{}
	l.mu.Lock()
	defer l.mu.Unlock()
	for h, rows := range l.hours {
		if h < since {
			continue
		}
		for k, c := range rows {
			addTo(map[int64]map[rowKey]*counts{0: out}, 0, k, c, func() {})
		}
	}
	return out
}

// The usage counters in Redis: a hash per hour, spend:usage:<unix hour>,
// whose fields are "<tenant>\x00<model>\x00<counter>", kept for Retention.
func (m *Meter) usageKey(hour int64) string {
	return m.store.Key("spend", "usage", strconv.FormatInt(hour, 10))
}

func usageField(k rowKey, i int) string {
	return k.tenant + "\x00" + k.model + "\x00" + fields[i]
}

// flushUsage writes the pending counters to Redis in one pipeline.
func (m *Meter) flushUsage(ctx context.Context) error {
	p := m.usage.takePending()
	if len(p) == 0 {
		return nil
	}
	err := m.store.Do(ctx, time.Second, func(ctx context.Context, r redis.Cmdable) error {
		_, err := r.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for h, rows := range p {
				key := m.usageKey(h)
				for k, c := range rows {
					for i, v := range c {
						if v != 0 {
							pipe.HIncrByFloat(ctx, key, usageField(k, i), v)
						}
					}
				}
				pipe.ExpireAt(ctx, key, time.Unix(h, 0).Add(Retention+time.Hour))
			}
			return nil
		})
		return err
	})
	if err != nil {
		m.usage.putBack(p)
	}
	return err
}

// readUsage sums the counters of the hours from since to now in Redis.
func (m *Meter) readUsage(ctx context.Context, since, now int64) (map[rowKey]*counts, error) {
	var cmds []*redis.MapStringStringCmd
	err := m.store.Do(ctx, 5*time.Second, func(ctx context.Context, r redis.Cmdable) error {
		cmds = cmds[:0]
		_, err := r.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for h := since; h <= now; h += 3600 {
				cmds = append(cmds, pipe.HGetAll(ctx, m.usageKey(h)))
			}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[rowKey]*counts{}
	for _, cmd := range cmds {
		for f, v := range cmd.Val() {
			tenant, rest, ok1 := strings.Cut(f, "\x00")
			model, name, ok2 := strings.Cut(rest, "\x00")
			i := slices.Index(fields[:], name)
			x, err := strconv.ParseFloat(v, 64)
			if !ok1 || !ok2 || i < 0 || err != nil {
				continue // not ours: another version's field
			}
			var c counts
			c[i] = x
			addTo(map[int64]map[rowKey]*counts{0: out}, 0, rowKey{tenant, model}, &c, func() {})
		}
	}
	return out, nil
}

// Row is the usage of one tenant and model over a report's hours.
type Row struct {
	Tenant, Model string
	// Calls are the upstream calls the tenant's calls made, and Prompt,
	// Completion, CacheHit and Reasoning their tokens as the providers
	// reported them; Spend is what they cost at the config's prices.
	Calls, Prompt, Completion, CacheHit, Reasoning int64
	Spend                                          float64
	// SavedCalls are the answers served without an upstream call of their
	// own (cache hits, callers that joined an identical call), with their
	// tokens and what they would have cost.
	SavedCalls, SavedTokens int64
	Savings                 float64
}

// BudgetState is one tenant's budget in its current period.
type BudgetState struct {
	Tenant, Period string
	// Unit is "tokens" or the currency.
	Unit        string
	Used, Limit float64
	Start, End  time.Time
}

// Report is the usage from a time on.
type Report struct {
	// From is the start of the first hour counted; To is now.
	From, To time.Time
	// Fleet: the counters every replica writes to Redis. Otherwise this
	// replica's own since it started (no Redis, or Redis did not answer).
	Fleet    bool
	Currency string
	Rows     []Row
	Budgets  []BudgetState
}

// Query says what a report covers.
type Query struct {
	// Tenant is a tenant label (a listed tenant, or "other"); empty means
	// every tenant.
	Tenant string
	// Since is rounded down to the hour; zero means the start of the
	// current day (UTC). A report reaches back at most Retention.
	Since time.Time
}

// ErrUnknownTenant: a report was asked for a tenant the config does not
// list (the unlisted ones are reported together as "other").
var ErrUnknownTenant = errors.New("unknown tenant")

// Report returns the usage per tenant and model from q.Since on, and the
// budgets: from Redis when the replicas share one (after writing this
// replica's pending counters), else from this replica's memory. It blocks
// for at most a few Redis round trips, bounded by ctx.
func (m *Meter) Report(ctx context.Context, q Query) (Report, error) {
	pol := m.pol.Load()
	if q.Tenant != "" && q.Tenant != OtherTenant && pol.tenants[q.Tenant] == nil {
		return Report{}, ErrUnknownTenant
	}
	now := m.now()
	since := q.Since
	if since.IsZero() {
		since, _, _ = period(PeriodDay, now)
	}
	if oldest := now.Add(-Retention); since.Before(oldest) {
		since = oldest
	}
	rep := Report{From: time.Unix(hourOf(since), 0).UTC(), To: now.UTC(), Currency: pol.currency}
	var rows map[rowKey]*counts
	if m.store != nil {
		m.flush(ctx)
		if r, err := m.readUsage(ctx, hourOf(since), hourOf(now)); err == nil {
			rows, rep.Fleet = r, true
		}
	}
	if rows == nil {
		rows = m.usage.local(hourOf(since))
	}
	for k, c := range rows {
		if q.Tenant != "" && k.tenant != q.Tenant {
			continue
		}
		rep.Rows = append(rep.Rows, Row{Tenant: k.tenant, Model: k.model,
			Calls: int64(c[fCalls]), Prompt: int64(c[fPrompt]), Completion: int64(c[fCompletion]),
			CacheHit: int64(c[fCacheHit]), Reasoning: int64(c[fReasoning]), Spend: c[fSpend],
			SavedCalls: int64(c[fSavedCalls]), SavedTokens: int64(c[fSavedTokens]), Savings: c[fSavings]})
	}
	slices.SortFunc(rep.Rows, func(a, b Row) int { return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Model, b.Model)) })
	for _, b := range m.Budgets() {
		if q.Tenant == "" || b.Tenant == q.Tenant {
			rep.Budgets = append(rep.Budgets, b)
		}
	}
	return rep, nil
}
