package spend

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a manual clock for the local (Redis-less) tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 5, 14, 23, 59, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// config is a one-backend document with tenants search and billing and
// spend section sp.
func config(sp regions.SpendPolicy) *regions.Config {
	return &regions.Config{
		Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{
			{Name: "ds", Endpoint: "http://h/v1", Models: []string{"deepseek-chat", "deepseek-reasoner"}},
			{Name: "vllm", Endpoint: "http://v/v1"},
		}}},
		Tenants: []regions.Tenant{{Principal: regions.Principal{Name: "search"}}, {Principal: regions.Principal{Name: "billing"}}},
		Spend:   sp,
	}
}

// request is a call whose estimate is prompt+completion tokens: prompt
// tokens are 3 + 4 + ⌈bytes/4⌉ for one message.
func request(promptTokens, maxTokens int) *detourv1.CompleteRequest {
	n := max(promptTokens-7, 1)
	return &detourv1.CompleteRequest{Model: "deepseek-chat", MaxTokens: int32(maxTokens),
		Messages: []*detourv1.Message{{Role: "user", Content: strings.Repeat("abcd", n)}}}
}

func limitErr(t *testing.T, err error) *LimitError {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) {
		t.Fatalf("error %v, want a *LimitError", err)
	}
	return le
}

func TestEstimate(t *testing.T) {
	tests := []struct {
		name string
		req  *detourv1.CompleteRequest
		def  int64
		want Estimate
	}{
		{name: "one message, max_tokens", req: request(100, 50), def: 256, want: Estimate{Prompt: 100, Completion: 50}},
		{name: "no maximum: the default", req: request(100, 0), def: 256, want: Estimate{Prompt: 100, Completion: 256}},
		{name: "max_completion_tokens wins", req: &detourv1.CompleteRequest{MaxTokens: 10, MaxCompletionTokens: 20,
			Messages: []*detourv1.Message{{Role: "user", Content: "hello"}}}, def: 256, want: Estimate{Prompt: 3 + 4 + 2, Completion: 20}},
		{name: "names, reasoning, tool calls and tools count", req: &detourv1.CompleteRequest{
			Messages: []*detourv1.Message{
				{Role: "user", Content: "12345678", Name: "abcd"},
				{Role: "assistant", ReasoningContent: "1234", ToolCalls: []*detourv1.ToolCall{{Function: &detourv1.FunctionCall{Name: "f", Arguments: "{}"}}}},
			},
			Tools: []*detourv1.Tool{{Function: &detourv1.FunctionDefinition{Name: "get", Description: "x", Parameters: "{}"}}},
		}, def: 1, want: Estimate{Prompt: 3 + (4 + 3) + (4 + 2) + 2, Completion: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(estimate(tt.req, tt.def), tt.want); diff != "" {
				t.Errorf("estimate (-got +want):\n%s", diff)
			}
		})
	}
}

func TestPrices(t *testing.T) {
	p := newPrices([]regions.Price{
		{Input: 1, Output: 2}, // everything else
		{Model: "deepseek-chat", Input: 0.27, CacheHitInput: 0.07, Output: 1.10},
		{Backend: "ds", Model: "deepseek-chat", Input: 0.5, Output: 3}, // this backend's own price
		{Backend: "vllm", Input: 0.01, Output: 0.01},
	})
	tk := Tokens{Prompt: 1_000_000, CacheHit: 400_000, Completion: 1_000_000}
	tests := []struct {
		backend, model string
		want           float64
	}{
		{"ds", "deepseek-chat", 0.5 + 3},                       // exact; no cache-hit price: input
		{"other", "deepseek-chat", 0.4*0.07 + 0.6*0.27 + 1.10}, // by model
		{"vllm", "llama", 0.02},                                // by backend
		{"other", "llama", 3},                                  // catch-all
	}
	for _, tt := range tests {
		if got := p.cost(tt.backend, tt.model, tk); !near(got, tt.want) {
			t.Errorf("cost(%s, %s) = %v, want %v", tt.backend, tt.model, got, tt.want)
		}
	}
	// A reservation in money assumes the highest price on any backend.
	e := Estimate{Prompt: 1_000_000, Completion: 1_000_000}
	if got := p.maxCost("deepseek-chat", e); !near(got, 0.5+3) {
		t.Errorf("maxCost(deepseek-chat) = %v, want 3.5 (ds's price)", got)
	}
	if got := p.maxCost("llama", e); !near(got, 3) {
		t.Errorf("maxCost(llama) = %v, want 3 (the catch-all)", got)
	}
	if got := newPrices(nil).cost("ds", "m", tk); got != 0 {
		t.Errorf("no prices: cost %v, want 0", got)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// A token rate admits its burst at once, refuses past it with the time
// until the bucket conforms, and refills at TPM/60 a second; a call larger
// than what is left goes through as debt that later calls wait off.
func TestTPMLocal(t *testing.T) {
	clk := newClock()
	m := New(nil, config(regions.SpendPolicy{Tenants: []regions.TenantSpend{
		{Name: "search", SpendLimits: regions.SpendLimits{TPM: 6000, TPMBurst: 1000}}, // 100 tokens/s
	}}), WithClock(clk.now))
	defer m.Close()
	var held []*Reservation
	for i := range 11 { // the bucket conforms while it is at most 1000 ahead: 11 calls of 100
		r, err := m.Reserve("search", request(50, 50))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		held = append(held, r)
	}
	_, err := m.Reserve("search", request(50, 50))
	if le := limitErr(t, err); le.Limit != LimitTPM || le.Tenant != "search" || le.RetryAfter != time.Second {
		t.Errorf("refusal %+v, want tpm for search, retry in 1s (100 tokens at 100/s)", le)
	}
	if _, err := m.Reserve("billing", request(50, 50)); err != nil {
		t.Errorf("billing has no limit: %v", err)
	}
	clk.add(time.Second)
	if _, err := m.Reserve("search", request(50, 50)); err != nil {
		t.Errorf("after 1s: %v, want a call admitted", err)
	}
	// Debt: a call of 5000 tokens is admitted whenever the bucket conforms,
	// and the next call waits 50s for it.
	clk.add(20 * time.Second)
	if _, err := m.Reserve("search", request(2500, 2500)); err != nil {
		t.Fatalf("large call: %v", err)
	}
	_, err = m.Reserve("search", request(50, 50))
	if le := limitErr(t, err); le.RetryAfter < 39*time.Second || le.RetryAfter > 41*time.Second {
		t.Errorf("after a 5000-token call: retry in %v, want about 40s", le.RetryAfter)
	}
	for _, r := range held {
		r.Release()
	}
}

// Settlement: the reservation is the estimate, the charge is the usage;
// the rate counts the usage. A failed call is released and charged
// nothing.
func TestTPMSettlement(t *testing.T) {
	clk := newClock()
	m := New(nil, config(regions.SpendPolicy{Tenants: []regions.TenantSpend{
		{Name: "search", SpendLimits: regions.SpendLimits{TPM: 60000, TPMBurst: 2000}}, // 1000 tokens/s
	}}), WithClock(clk.now))
	defer m.Close()
	// Each call reserves 1000 (max_tokens 900) and spends 200.
	calls := func(n int) int {
		ok := 0
		for range n {
			r, err := m.Reserve("search", request(100, 900))
			if err != nil {
				continue
			}
			ok++
			m.Charge("search", "deepseek-chat", "ds", Tokens{Prompt: 100, Completion: 100})
			r.Release()
		}
		return ok
	}
	if got := calls(20); got != 11 {
		// Settled one by one, each call costs its 200 tokens: the bucket
		// conforms while at most 2000 are spent, so 11 calls (a reservation
		// counted as the estimate would have allowed 3).
		t.Errorf("settled one at a time: %d calls admitted, want 11 (200 tokens each)", got)
	}
	clk.add(10 * time.Second)
	// A failed call: reserved and released, nothing charged.
	for range 100 {
		r, err := m.Reserve("search", request(100, 900))
		if err != nil {
			t.Fatalf("failed calls must cost nothing: %v", err)
		}
		r.Release()
		r.Release() // twice is once
	}
}

// A stream cut mid-way is charged its prompt estimate and the text it
// streamed.
func TestStreamedTokens(t *testing.T) {
	req := request(100, 900)
	chunks := []*detourv1.CompleteChunk{{Delta: "12345678"}, {ReasoningDelta: "1234"},
		{ToolCallDeltas: []*detourv1.ToolCallDelta{{Function: &detourv1.FunctionCall{Name: "f", Arguments: "{\"a\":"}}}}}
	n := 0
	for _, ch := range chunks {
		n += ChunkBytes(ch)
	}
	if got, want := (Tokens{Prompt: PromptTokens(req), Completion: TextTokens(n)}), (Tokens{Prompt: 100, Completion: 5}); got != want {
		t.Errorf("streamed %+v, want %+v", got, want)
	}
	resp := &detourv1.CompleteResponse{Content: "1234", ReasoningContent: "12345"}
	if got, want := AnswerTokens(req, resp), (Tokens{Prompt: 100, Completion: 3}); got != want {
		t.Errorf("answer without usage %+v, want %+v", got, want)
	}
}

// A budget in tokens refuses the call it cannot cover, says until when,
// and starts afresh with the next period.
func TestBudgetTokensLocal(t *testing.T) {
	clk := newClock() // 23:59 on 2026-05-14
	m := New(nil, config(regions.SpendPolicy{Tenants: []regions.TenantSpend{
		{Name: "search", SpendLimits: regions.SpendLimits{Budget: &regions.Budget{Period: regions.PeriodDay, Tokens: 1000}}},
	}}), WithClock(clk.now))
	defer m.Close()
	for range 4 {
		r, err := m.Reserve("search", request(100, 100)) // 200 reserved, 150 spent
		if err != nil {
			t.Fatal(err)
		}
		m.Charge("search", "deepseek-chat", "ds", Tokens{Prompt: 100, Completion: 50})
		r.Release()
	}
	// 600 spent: 400 left covers a 200 reservation, not a 500 one.
	if _, err := m.Reserve("search", request(250, 250)); err == nil {
		t.Fatal("a 500-token call with 400 left was admitted")
	} else if le := limitErr(t, err); le.Limit != LimitBudget || le.Period != "day" || !le.Until.Equal(time.Date(2026, 5, 15, 0, 0, 0, 0, time.UTC)) ||
		le.Used != 600 || le.Max != 1000 || le.Unit != "tokens" {
		t.Errorf("refusal %+v", le)
	} else if msg := le.Error(); msg != "tenant search: day budget exhausted until 2026-05-15T00:00:00Z (600 of 1000 tokens spent or reserved; this call reserves up to 500)" {
		t.Errorf("message %q", msg)
	}
	if r, err := m.Reserve("search", request(100, 100)); err != nil {
		t.Errorf("a 200-token call with 400 left: %v", err)
	} else {
		r.Release()
	}
	got := m.Budgets()
	want := []BudgetState{{Tenant: "search", Period: "day", Unit: "tokens", Used: 600, Limit: 1000,
		Start: time.Date(2026, 5, 14, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 5, 15, 0, 0, 0, 0, time.UTC)}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("budgets (-got +want):\n%s", diff)
	}
	clk.add(time.Minute) // the next day
	if r, err := m.Reserve("search", request(250, 250)); err != nil {
		t.Errorf("next day: %v", err)
	} else {
		r.Release()
	}
}

// A budget in money reserves the estimate at the highest price of the
// model and is charged the call's cost at its backend's price.
func TestBudgetMoneyLocal(t *testing.T) {
	clk := newClock()
	m := New(nil, config(regions.SpendPolicy{
		Currency: "EUR",
		Prices: []regions.Price{
			{Model: "deepseek-chat", Input: 1, Output: 2}, // per million
			{Backend: "ds", Model: "deepseek-chat", Input: 2, Output: 4},
		},
		Others: regions.SpendLimits{Budget: &regions.Budget{Period: regions.PeriodMonth, Amount: 0.01}},
	}), WithClock(clk.now))
	defer m.Close()
	// 1000 prompt and 1000 completion tokens reserve 0.002+0.004 = 0.006 at
	// ds's price; two such calls in flight do not fit 0.01.
	r1, err := m.Reserve("someone", request(1000, 1000))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Reserve("someone-else", request(1000, 1000)) // unlisted tenants share others
	if le := limitErr(t, err); le.Tenant != "other" || le.Unit != "EUR" || le.Period != "month" ||
		!le.Until.Equal(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("refusal %+v", le)
	}
	m.Charge("someone", "deepseek-chat", "other-backend", Tokens{Prompt: 1000, Completion: 500}) // 0.001 + 0.001
	r1.Release()
	st := m.Budgets()
	if len(st) != 1 || st[0].Tenant != "other" || !near(st[0].Used, 0.002) || st[0].Limit != 0.01 {
		t.Errorf("budgets %+v, want other with 0.002 of 0.01 used", st)
	}
}

// Savings spend nothing of a limit; the report counts charges and savings
// per tenant and model (unlisted ones as "other", unknown models as
// "other").
func TestReportLocal(t *testing.T) {
	clk := newClock()
	m := New(nil, config(regions.SpendPolicy{
		Prices:  []regions.Price{{Model: "deepseek-chat", Input: 1, CacheHitInput: 0.5, Output: 2}},
		Tenants: []regions.TenantSpend{{Name: "search", SpendLimits: regions.SpendLimits{Budget: &regions.Budget{Period: "day", Tokens: 300}}}},
	}), WithClock(clk.now))
	defer m.Close()
	for range 3 {
		m.Save("search", "deepseek-chat", "ds", Tokens{Prompt: 100, Completion: 100})
	}
	r, err := m.Reserve("search", request(100, 100))
	if err != nil {
		t.Fatalf("savings spent the budget: %v", err)
	}
	r.Release()
	m.Charge("search", "deepseek-chat", "ds", Tokens{Prompt: 1_000_000, CacheHit: 1_000_000, Completion: 10, Reasoning: 4})
	m.Charge("walk-in", "my-model", "vllm", Tokens{Prompt: 7, Completion: 3})
	clk.add(2 * time.Minute) // the next day's hour: Since reaches back
	rep, err := m.Report(t.Context(), Query{Since: clk.now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{Tenant: "other", Model: "other", Calls: 1, Prompt: 7, Completion: 3},
		{Tenant: "search", Model: "deepseek-chat", Calls: 1, Prompt: 1_000_000, Completion: 10, CacheHit: 1_000_000, Reasoning: 4,
			Spend: 0.5 + 20e-6, SavedCalls: 3, SavedTokens: 600, Savings: 3 * 300e-6},
	}
	if diff := cmp.Diff(rep.Rows, want, cmp.Comparer(near)); diff != "" {
		t.Errorf("rows (-got +want):\n%s", diff)
	}
	if rep.Fleet || rep.Currency != "USD" || !rep.From.Equal(time.Date(2026, 5, 14, 23, 0, 0, 0, time.UTC)) {
		t.Errorf("report fleet %v currency %q from %v", rep.Fleet, rep.Currency, rep.From)
	}
	if rep, _ := m.Report(t.Context(), Query{Tenant: "other"}); len(rep.Rows) != 0 {
		t.Errorf("today (since midnight) for other: %+v, want nothing (yesterday's)", rep.Rows)
	}
	if _, err := m.Report(t.Context(), Query{Tenant: "nobody"}); !errors.Is(err, ErrUnknownTenant) {
		t.Errorf("unknown tenant: %v", err)
	}
}
