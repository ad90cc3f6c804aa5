package regions

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// SpendPolicy is the spend section of the document: what tokens cost, and
// how many tokens and how much money each tenant may spend. The zero value
// prices nothing and limits nothing; tokens are counted either way. Package
// spend applies it.
type SpendPolicy struct {
	// Currency names the unit of every price and money budget, as a label
	// ("USD", "EUR", "CNY"): detour converts nothing. Empty means USD.
	Currency string `yaml:"currency,omitempty" json:"currency,omitempty"`
	// Prices are the providers' prices per million tokens, by backend and
	// model. A call is priced by the most specific entry that matches its
	// backend and model (backend and model, then model alone, then backend
	// alone, then neither); a call no entry matches costs nothing.
	Prices []Price `yaml:"prices,omitempty" json:"prices,omitempty"`
	// CompletionEstimate is the answer's tokens reserved for a request that
	// sets neither max_tokens nor max_completion_tokens. Zero means 256.
	CompletionEstimate int `yaml:"completion_estimate,omitempty" json:"completion_estimate,omitempty"`
	// Tenants are the token limits of tenants listed under the document's
	// tenants, by name. A listed tenant without an entry has no limit.
	Tenants []TenantSpend `yaml:"tenants,omitempty" json:"tenants,omitempty"`
	// Others is the limit shared by every tenant the document's tenants do
	// not list (they are counted together, as "other"). The zero value is
	// no limit.
	Others SpendLimits `yaml:"others,omitempty" json:"others,omitempty"`
}

// Price is what one backend or model costs, in the policy's currency per
// million tokens.
type Price struct {
	// Backend is a backend or fallback of the document. Empty means every
	// backend.
	Backend string `yaml:"backend,omitempty" json:"backend,omitempty"`
	// Model is the requested model. Empty means every model.
	Model string `yaml:"model,omitempty" json:"model,omitempty"`
	// Input is the price of a million prompt tokens (the provider's cache
	// misses).
	Input float64 `yaml:"input,omitempty" json:"input,omitempty"`
	// CacheHitInput is the price of a million prompt tokens the provider
	// served from its own context cache (DeepSeek's prompt_cache_hit_tokens,
	// OpenAI's cached_tokens). Zero means Input.
	CacheHitInput float64 `yaml:"cache_hit_input,omitempty" json:"cache_hit_input,omitempty"`
	// Output is the price of a million completion tokens, reasoning
	// included.
	Output float64 `yaml:"output,omitempty" json:"output,omitempty"`
}

// TenantSpend is one listed tenant's token limits.
type TenantSpend struct {
	// Name is a tenant of the document's tenants.
	Name        string `yaml:"name" json:"name"`
	SpendLimits `yaml:",inline" json:",inline"`
}

// SpendLimits are a tenant's token rate and budget. The zero value limits
// nothing.
type SpendLimits struct {
	// TPM caps the tokens (prompt and completion) the tenant's calls spend
	// per minute, fleet-wide with Redis. Zero means no cap.
	TPM float64 `yaml:"tpm,omitempty" json:"tpm,omitempty"`
	// TPMBurst is how many tokens may be spent at once above the steady
	// rate. Zero means 10 seconds' worth, TPM/6.
	TPMBurst float64 `yaml:"tpm_burst,omitempty" json:"tpm_burst,omitempty"`
	// Budget caps what the tenant spends in a calendar day or month. Nil
	// means no budget.
	Budget *Budget `yaml:"budget,omitempty" json:"budget,omitempty"`
}

// Budget periods (Budget.Period), calendar periods in UTC.
const (
	PeriodDay   = "day"
	PeriodMonth = "month"
)

// Budget is what a tenant may spend in a period, in tokens or in money:
// exactly one of Tokens and Amount is set.
type Budget struct {
	// Period is "day" or "month", a calendar period in UTC.
	Period string `yaml:"period" json:"period"`
	// Tokens is the budget in tokens (prompt and completion).
	Tokens float64 `yaml:"tokens,omitempty" json:"tokens,omitempty"`
	// Amount is the budget in the policy's currency, priced by Prices.
	Amount float64 `yaml:"amount,omitempty" json:"amount,omitempty"`
}

// Defaults of the spend section.
const (
	DefaultCurrency           = "USD"
	DefaultCompletionEstimate = 256
)

// CurrencyOrDefault is p.Currency, or DefaultCurrency.
func (p SpendPolicy) CurrencyOrDefault() string {
	if p.Currency == "" {
		return DefaultCurrency
	}
	return p.Currency
}

// Limited reports whether l limits anything.
func (l SpendLimits) Limited() bool { return l.TPM > 0 || l.Budget != nil }

// spend checks the spend section against the rest of the document c.
func (v *validator) spend(c *Config) {
	p := c.Spend
	if p.Currency != "" && !validCurrency(p.Currency) {
		v.add("spend.currency %q must be 1..16 letters", p.Currency)
	}
	if p.CompletionEstimate < 0 || p.CompletionEstimate > 10_000_000 {
		v.add("spend.completion_estimate: %d must be in 0..10000000", p.CompletionEstimate)
	}
	backends := map[string]bool{}
	for _, r := range c.Regions {
		for _, b := range r.Backends {
			backends[b.Name] = true
		}
	}
	for _, b := range c.Fallbacks {
		backends[b.Name] = true
	}
	seen := map[[2]string]int{}
	for i, pr := range p.Prices {
		where := fmt.Sprintf("spend.prices[%d]", i)
		if pr.Backend != "" && !backends[pr.Backend] {
			v.add("%s: backend %q is not a backend or fallback of the document%s", where, pr.Backend, suggestName(pr.Backend, backends))
		}
		if pr.Model != "" && strings.TrimSpace(pr.Model) != pr.Model {
			v.add("%s: model %q has leading or trailing spaces", where, pr.Model)
		}
		k := [2]string{pr.Backend, pr.Model}
		if first, dup := seen[k]; dup {
			v.add("%s: same backend and model as spend.prices[%d]", where, first)
		} else {
			seen[k] = i
		}
		for _, f := range []struct {
			name string
			x    float64
		}{{"input", pr.Input}, {"cache_hit_input", pr.CacheHitInput}, {"output", pr.Output}} {
			if !inRange(f.x, 0, 1e9) {
				v.add("%s.%s: %g must be in 0..1e9 (per million tokens)", where, f.name, f.x)
			}
		}
	}
	tenants := map[string]bool{}
	for _, t := range c.Tenants {
		tenants[t.Name] = true
	}
	named := map[string]int{}
	for i, t := range p.Tenants {
		where := fmt.Sprintf("spend.tenants[%d]", i)
		switch first, dup := named[t.Name]; {
		case t.Name == "":
			v.add("%s: name is required", where)
		case dup:
			v.add("%s (%s): given twice, first at spend.tenants[%d]", where, t.Name, first)
		case !tenants[t.Name]:
			v.add("%s: %q is not a tenant of the document's tenants%s; the tenants it does not list share spend.others", where, t.Name, suggestName(t.Name, tenants))
		}
		named[t.Name] = i
		if t.Name != "" {
			where = fmt.Sprintf("%s (%s)", where, t.Name)
		}
		v.spendLimits(where, t.SpendLimits, len(p.Prices) > 0)
	}
	v.spendLimits("spend.others", p.Others, len(p.Prices) > 0)
}

func (v *validator) spendLimits(where string, l SpendLimits, priced bool) {
	if !inRange(l.TPM, 0, 1e15) {
		v.add("%s.tpm: %g must be in 0..1e15", where, l.TPM)
	}
	if !inRange(l.TPMBurst, 0, 1e15) {
		v.add("%s.tpm_burst: %g must be in 0..1e15", where, l.TPMBurst)
	}
	if l.TPMBurst > 0 && l.TPM == 0 {
		v.add("%s.tpm_burst is set without tpm", where)
	}
	b := l.Budget
	if b == nil {
		return
	}
	switch b.Period {
	case PeriodDay, PeriodMonth:
	case "":
		v.add("%s.budget.period is required: %q or %q", where, PeriodDay, PeriodMonth)
	default:
		v.add("%s.budget.period %q must be %q or %q", where, b.Period, PeriodDay, PeriodMonth)
	}
	if !inRange(b.Tokens, 0, 1e18) || !inRange(b.Amount, 0, 1e15) {
		v.add("%s.budget: tokens and amount must be >= 0", where)
	}
	switch {
	case b.Tokens > 0 && b.Amount > 0:
		v.add("%s.budget: set tokens or amount, not both", where)
	case b.Tokens == 0 && b.Amount == 0:
		v.add("%s.budget: set tokens or amount (a budget of nothing refuses every call; remove the budget for none)", where)
	case b.Amount > 0 && !priced:
		v.add("%s.budget.amount needs spend.prices: without them every call costs nothing", where)
	}
}

// validCurrency reports whether c is 1..16 letters.
func validCurrency(c string) bool {
	if len(c) == 0 || len(c) > 16 {
		return false
	}
	for _, r := range c {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// suggestName returns ", did you mean X?" for the name in names closest to
// s, or "".
func suggestName(s string, names map[string]bool) string {
	best, bestD := "", math.MaxInt
	for _, n := range slices.Sorted(maps.Keys(names)) {
		if d := editDistance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" || bestD > max(2, len(s)/3) {
		return ""
	}
	return fmt.Sprintf(", did you mean %s?", best)
}
