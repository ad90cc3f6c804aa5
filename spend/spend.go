package spend

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/detour-dev/detour/fleet"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// OtherTenant is the label of every tenant the config does not list: they
// are counted together, and share spend.others.
const OtherTenant = "other"

// Period kinds of a budget.
const (
	PeriodDay   = regions.PeriodDay
	PeriodMonth = regions.PeriodMonth
)

// Limits a refusal names (LimitError.Limit).
const (
	LimitTPM    = "tpm"
	LimitBudget = "budget"
)

// LimitError is a call refused by its tenant's token rate or budget.
type LimitError struct {
	// Tenant is the tenant's label (a listed tenant, or "other").
	Tenant string
	// Limit is LimitTPM or LimitBudget.
	Limit string
	// RetryAfter is when the token rate admits a call again (LimitTPM).
	RetryAfter time.Duration
	// Period, Until, Used, Max and Unit describe the budget (LimitBudget):
	// it is spent until the period ends.
	Period      string
	Until       time.Time
	Used, Max   float64
	Unit        string
	Reservation float64 // what the refused call would have reserved
}

func (e *LimitError) Error() string {
	if e.Limit == LimitBudget {
		return fmt.Sprintf("tenant %s: %s budget exhausted until %s (%s of %s %s spent or reserved; this call reserves up to %s)",
			e.Tenant, e.Period, e.Until.UTC().Format(time.RFC3339), num(e.Used), num(e.Max), e.Unit, num(e.Reservation))
	}
	return fmt.Sprintf("tenant %s is over its token rate (tpm); retry in %s", e.Tenant, e.RetryAfter.Round(time.Millisecond))
}

// num prints a count or an amount briefly.
func num(x float64) string {
	switch {
	case x == float64(int64(x)):
		return strconv.FormatInt(int64(x), 10)
	case x >= 100 || x <= -100:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.TrimRight(strconv.FormatFloat(x, 'f', 6, 64), "0")
}

// Option configures a Meter.
type Option func(*Meter)

// WithClock sets the Meter's clock (leases, the local limits, budget
// periods, report hours). The default is time.Now.
func WithClock(now func() time.Time) Option { return func(m *Meter) { m.now = now } }

// WithMetrics records the token, spend and budget metrics in mt.
func WithMetrics(mt *metrics.Metrics) Option { return func(m *Meter) { m.metrics = mt } }

// WithLogger sets where the Meter logs. The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(m *Meter) { m.log = l } }

// WithSyncEvery sets how often the sync loop sends what the replica owes
// and writes the usage counters to Redis (default 100ms; counters at most
// every 10 ticks).
func WithSyncEvery(d time.Duration) Option { return func(m *Meter) { m.every = d } }

// Meter counts the tokens and money each tenant spends and holds tenants to
// their token rate and budget, across the fleet through Redis (see doc.go).
// It is safe for concurrent use. Reserve blocks only when the replica holds
// no leased units for the call, for at most the Store's timeout; the other
// methods do not block. With a Store it runs one goroutine, which Close
// stops.
type Meter struct {
	store    *fleet.Store
	replicas int
	now      func() time.Time
	metrics  *metrics.Metrics
	log      *slog.Logger
	every    time.Duration
	leaseTTL time.Duration

	pol      atomic.Pointer[policy]
	accounts sync.Map // account key -> *account
	usage    usageLog

	mu     sync.Mutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Meter sharing its limits and counters through store (nil:
// every replica on its own), with the policy of cfg.
func New(store *fleet.Store, cfg *regions.Config, opts ...Option) *Meter {
	m := &Meter{store: store, replicas: 1, now: time.Now, log: slog.Default(), every: 100 * time.Millisecond, leaseTTL: leaseTTL}
	for _, o := range opts {
		o(m)
	}
	if store != nil {
		m.replicas = max(store.Replicas(), 1)
	}
	m.Apply(cfg)
	m.metrics.BudgetSource(m.budgetGauges)
	if store != nil {
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel, m.done = cancel, make(chan struct{})
		go m.loop(ctx)
	}
	return m
}

// Apply makes cfg's spend section the policy; the state (leases, counts)
// of each tenant carries over.
func (m *Meter) Apply(cfg *regions.Config) {
	m.pol.Store(newPolicy(cfg))
}

// Close stops the sync loop, writes what the replica owes and its pending
// counters to Redis (bounded by the Store's timeouts) and waits for the
// lease requests in flight. Reserve keeps working after Close, locally.
func (m *Meter) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	if m.cancel != nil {
		m.cancel()
		<-m.done
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		m.flush(ctx)
		cancel()
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// policy is the spend section of one config, with defaults applied and
// indexed for the hot path. It is immutable once built.
type policy struct {
	currency   string
	completion int64
	prices     prices
	tenants    map[string]*tenantPolicy // every listed tenant
	others     *tenantPolicy
	models     map[string]bool // models the config names: their own label
	backends   map[string]bool
}

// tenantPolicy is one tenant label's limits.
type tenantPolicy struct {
	label   string
	account string // the key of its account (and in Redis): the name, or "*" for the others
	regions.SpendLimits
	burst float64 // TPMBurst with its default
}

func newPolicy(cfg *regions.Config) *policy {
	sp := cfg.Spend
	p := &policy{
		currency: sp.CurrencyOrDefault(), completion: int64(sp.CompletionEstimate), prices: newPrices(sp.Prices),
		tenants: map[string]*tenantPolicy{}, models: map[string]bool{}, backends: map[string]bool{},
	}
	if p.completion <= 0 {
		p.completion = regions.DefaultCompletionEstimate
	}
	limits := map[string]regions.SpendLimits{}
	for _, t := range sp.Tenants {
		limits[t.Name] = t.SpendLimits
	}
	for _, t := range cfg.Tenants {
		p.tenants[t.Name] = newTenantPolicy(t.Name, t.Name, limits[t.Name])
	}
	p.others = newTenantPolicy(OtherTenant, "*", sp.Others)
	add := func(b regions.Backend) {
		p.backends[b.Name] = true
		for _, mo := range b.Models {
			p.models[mo] = true
		}
	}
	for _, r := range cfg.Regions {
		for _, b := range r.Backends {
			add(b)
		}
	}
	for _, b := range cfg.Fallbacks {
		add(b)
	}
	for _, pr := range sp.Prices {
		if pr.Model != "" {
			p.models[pr.Model] = true
		}
	}
	return p
}

func newTenantPolicy(label, account string, l regions.SpendLimits) *tenantPolicy {
	t := &tenantPolicy{label: label, account: account, SpendLimits: l, burst: l.TPMBurst}
	if t.burst <= 0 {
		t.burst = l.TPM / 6 // 10 seconds' worth
	}
	return t
}

func (p *policy) tenant(name string) *tenantPolicy {
	if t := p.tenants[name]; t != nil {
		return t
	}
	return p.others
}

func (p *policy) model(name string) string {
	if p.models[name] {
		return name
	}
	return OtherTenant
}

func (p *policy) backend(name string) string {
	if p.backends[name] {
		return name
	}
	return OtherTenant
}

func (t *tenantPolicy) rateLimit() limit {
	return limit{rate: t.TPM / 60, burst: t.burst}
}

// account is one tenant label's pools: its token rate, and its budget for
// the current period and those of past periods still settling. It lives as
// long as the Meter.
type account struct {
	rate *pool

	mu      sync.Mutex // guards retired and budget changes
	budget  atomic.Pointer[budgetPool]
	retired []*budgetPool
}

// budgetPool is a budget's pool for one period.
type budgetPool struct {
	*pool
	kind       string // day or month
	start, end time.Time
}

func (m *Meter) account(t *tenantPolicy) *account {
	if a, ok := m.accounts.Load(t.account); ok {
		return a.(*account)
	}
	a := &account{rate: &pool{key: m.store.Key("spend", "tpm", t.account)}}
	v, _ := m.accounts.LoadOrStore(t.account, a)
	return v.(*account)
}

// budgetPool returns the pool of the period of kind that holds now,
// starting it (and retiring the last one) when a period ends or the kind
// changes.
func (m *Meter) budgetPool(t *tenantPolicy, a *account, kind string, now time.Time) *budgetPool {
	if b := a.budget.Load(); b != nil && b.kind == kind && now.Before(b.end) && !now.Before(b.start) {
		return b
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if b := a.budget.Load(); b != nil && b.kind == kind && now.Before(b.end) && !now.Before(b.start) {
		return b
	}
	start, end, name := period(kind, now)
	b := &budgetPool{pool: &pool{key: m.store.Key("spend", "budget", t.account, name), budget: true}, kind: kind, start: start, end: end}
	if old := a.budget.Swap(b); old != nil {
		a.retired = append(a.retired, old)
	}
	return b
}

func (b *budgetPool) limit(bud *regions.Budget) limit {
	return limit{max: max(bud.Tokens, bud.Amount), end: b.end}
}

// unit is what a budget counts: "tokens", or the currency.
func (p *policy) unit(b *regions.Budget) string {
	if b.Amount > 0 {
		return p.currency
	}
	return "tokens"
}

// Reservation is what Reserve set aside for one call. Release it once the
// call is over, whatever its outcome; the tokens an upstream call spent are
// counted by Charge.
type Reservation struct {
	m            *Meter
	rate, budget ticket
	released     atomic.Bool
}

// Reserve sets aside what req may spend for tenant's call, under the
// tenant's token rate and budget, and returns the reservation; a nil one
// (and no error) when the tenant has no limit. A call over a limit gets a
// *LimitError. It blocks only while a lease it waits for is requested
// from Redis, for at most the Store's timeout.
func (m *Meter) Reserve(tenant string, req *detourv1.CompleteRequest) (*Reservation, error) {
	pol := m.pol.Load()
	t := pol.tenant(tenant)
	if !t.Limited() {
		return nil, nil
	}
	est := estimate(req, pol.completion)
	a := m.account(t)
	r := &Reservation{m: m}
	if t.TPM > 0 {
		tk, ok, wait := m.take(a.rate, float64(est.Total()), t.rateLimit())
		if !ok {
			m.metrics.SpendRejected(t.label, LimitTPM)
			return nil, &LimitError{Tenant: t.label, Limit: LimitTPM, RetryAfter: max(wait, time.Millisecond)}
		}
		r.rate = tk
	}
	if bud := t.Budget; bud != nil {
		now := m.now()
		b := m.budgetPool(t, a, bud.Period, now)
		units := float64(est.Total())
		if bud.Amount > 0 {
			units = pol.prices.maxCost(req.GetModel(), est)
		}
		tk, ok, _ := m.take(b.pool, units, b.limit(bud))
		if !ok {
			m.release(r.rate)
			m.metrics.SpendRejected(t.label, LimitBudget)
			used, lim := m.budgetUsed(b.pool)
			return nil, &LimitError{Tenant: t.label, Limit: LimitBudget, Period: bud.Period, Until: b.end,
				Used: used, Max: lim, Unit: pol.unit(bud), Reservation: units}
		}
		r.budget = tk
	}
	return r, nil
}

// Release gives back what r set aside. It may be called more than once,
// and on a nil *Reservation.
func (r *Reservation) Release() {
	if r == nil || r.released.Swap(true) {
		return
	}
	r.m.release(r.rate)
	r.m.release(r.budget)
}

// Charge counts the tokens one upstream call spent for tenant's call to
// model on backend: in the metrics, the usage counters, and against the
// tenant's token rate and budget. Call it once per upstream call, however
// many callers shared it (they are one tenant's).
func (m *Meter) Charge(tenant, model, backend string, tk Tokens) {
	pol := m.pol.Load()
	t := pol.tenant(tenant)
	now := m.now()
	cost := pol.prices.cost(backend, model, tk)
	ml, bl := pol.model(model), pol.backend(backend)
	m.metrics.Spent(bl, ml, t.label, pol.currency, metrics.SpendTokens{Prompt: tk.Prompt, Completion: tk.Completion,
		CacheHit: tk.CacheHit, CacheMiss: tk.CacheMiss, Reasoning: tk.Reasoning}, cost)
	var c counts
	c[fCalls], c[fPrompt], c[fCompletion], c[fCacheHit], c[fReasoning], c[fSpend] = 1, float64(tk.Prompt), float64(tk.Completion),
		float64(tk.CacheHit), float64(tk.Reasoning), cost
	m.usage.add(now, rowKey{t.label, ml}, &c, m.store != nil)
	if !t.Limited() {
		return
	}
	a := m.account(t)
	if t.TPM > 0 {
		m.charge(a.rate, float64(tk.Total()), t.rateLimit())
	}
	if bud := t.Budget; bud != nil {
		b := m.budgetPool(t, a, bud.Period, now)
		units := float64(tk.Total())
		if bud.Amount > 0 {
			units = cost
		}
		m.charge(b.pool, units, b.limit(bud))
	}
}

// Save counts an answer tenant's call to model got without an upstream
// call of its own (a cache hit, or a share of another caller's identical
// call): its tokens and what they would have cost on backend, the one that
// produced it. It spends nothing of the tenant's limits.
func (m *Meter) Save(tenant, model, backend string, tk Tokens) {
	pol := m.pol.Load()
	t := pol.tenant(tenant)
	cost := pol.prices.cost(backend, model, tk)
	ml := pol.model(model)
	m.metrics.Saved(pol.backend(backend), ml, t.label, pol.currency, tk.Total(), cost)
	var c counts
	c[fSavedCalls], c[fSavedTokens], c[fSavings] = 1, float64(tk.Total()), cost
	m.usage.add(m.now(), rowKey{t.label, ml}, &c, m.store != nil)
}

// Budgets returns every budget of the policy in its current period, as
// this replica knows it (see BudgetState). It does no I/O.
func (m *Meter) Budgets() []BudgetState {
	pol := m.pol.Load()
	now := m.now()
	var out []BudgetState
	for _, t := range pol.all() {
		bud := t.Budget
		if bud == nil {
			continue
		}
		b := m.budgetPool(t, m.account(t), bud.Period, now)
		used, lim := m.budgetUsed(b.pool)
		if lim == 0 {
			lim = b.limit(bud).max
		}
		out = append(out, BudgetState{Tenant: t.label, Period: bud.Period, Unit: pol.unit(bud), Used: used, Limit: lim,
			Start: b.start, End: b.end})
	}
	return out
}

// budgetUsed is what a budget pool counts as used (the fleet's, as of the
// last sync, and this replica's charges since) and its limit.
func (m *Meter) budgetUsed(p *pool) (used, lim float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used + p.charged, p.lim.max
}

func (m *Meter) budgetGauges() []metrics.Budget {
	var out []metrics.Budget
	for _, b := range m.Budgets() {
		out = append(out, metrics.Budget{Tenant: b.Tenant, Period: b.Period, Unit: b.Unit, Used: b.Used, Limit: b.Limit})
	}
	return out
}

// all is every tenant policy, listed ones by name then the others.
func (p *policy) all() []*tenantPolicy {
	out := make([]*tenantPolicy, 0, len(p.tenants)+1)
	for _, t := range p.tenants {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *tenantPolicy) int { return cmp.Compare(a.label, b.label) })
	return append(out, p.others)
}

// loop is the sync loop: every tick it sends what each pool owes (and
// refreshes budgets now and then); every 10 ticks it writes the usage
// counters.
func (m *Meter) loop(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.every)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.syncPools(50 * m.every)
		if n%10 == 0 {
			if err := m.flushUsage(ctx); err != nil && ctx.Err() == nil {
				m.log.Debug("spend: usage counters not written to redis", "err", err)
			}
		}
	}
}

// syncPools runs sync on every pool, keeps each budget's current period
// open (so that its gauge follows the fleet), and drops the pools of
// periods over and settled.
func (m *Meter) syncPools(every time.Duration) {
	now := m.now()
	pol := m.pol.Load()
	for _, t := range pol.all() {
		if bud := t.Budget; bud != nil {
			b := m.budgetPool(t, m.account(t), bud.Period, now)
			b.mu.Lock()
			b.lim = b.limit(bud)
			b.mu.Unlock()
		}
	}
	m.accounts.Range(func(_, v any) bool {
		a := v.(*account)
		m.sync(a.rate, now, every)
		if b := a.budget.Load(); b != nil {
			m.sync(b.pool, now, every)
		}
		a.mu.Lock()
		kept := a.retired[:0]
		for _, b := range a.retired {
			m.sync(b.pool, now, every)
			b.mu.Lock()
			settled := b.owed == 0 && b.leasing == nil
			b.mu.Unlock()
			if !settled && now.Before(b.end.Add(time.Hour)) {
				kept = append(kept, b)
			}
		}
		clear(a.retired[len(kept):])
		a.retired = kept
		a.mu.Unlock()
		return true
	})
}

// flush sends what every pool owes and writes the usage counters, and
// waits for both, within ctx.
func (m *Meter) flush(ctx context.Context) {
	now := m.now()
	var waits []chan struct{}
	m.accounts.Range(func(_, v any) bool {
		a := v.(*account)
		pools := []*pool{a.rate}
		if b := a.budget.Load(); b != nil {
			pools = append(pools, b.pool)
		}
		for _, p := range pools {
			m.sync(p, now, 0)
			p.mu.Lock()
			if p.leasing != nil {
				waits = append(waits, p.leasing)
			}
			p.mu.Unlock()
		}
		return true
	})
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return
		}
	}
	m.flushUsage(ctx) //nolint:errcheck // the counters stay pending
}
