package regions

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const spendBase = `regions:
  - name: a
    backends:
      - name: deepseek-eu
        endpoint: http://h/v1
tenants:
  - name: search
  - name: billing
`

func TestSpendDecodes(t *testing.T) {
	c, err := Load([]byte(spendBase + `spend:
  currency: EUR
  completion_estimate: 512
  prices:
    - {model: deepseek-chat, input: 0.27, cache_hit_input: 0.07, output: 1.10}
    - {backend: deepseek-eu, model: deepseek-chat, input: 0.3, output: 1.2}
  tenants:
    - name: search
      tpm: 60000
      tpm_burst: 2000
      budget: {period: month, amount: 500}
    - name: billing
      budget: {period: day, tokens: 1000000}
  others:
    tpm: 6000
`))
	if err != nil {
		t.Fatal(err)
	}
	want := SpendPolicy{
		Currency:           "EUR",
		CompletionEstimate: 512,
		Prices: []Price{
			{Model: "deepseek-chat", Input: 0.27, CacheHitInput: 0.07, Output: 1.10},
			{Backend: "deepseek-eu", Model: "deepseek-chat", Input: 0.3, Output: 1.2},
		},
		Tenants: []TenantSpend{
			{Name: "search", SpendLimits: SpendLimits{TPM: 60000, TPMBurst: 2000, Budget: &Budget{Period: PeriodMonth, Amount: 500}}},
			{Name: "billing", SpendLimits: SpendLimits{Budget: &Budget{Period: PeriodDay, Tokens: 1e6}}},
		},
		Others: SpendLimits{TPM: 6000},
	}
	if diff := cmp.Diff(c.Spend, want); diff != "" {
		t.Errorf("spend (-got +want):\n%s", diff)
	}
	if got := (SpendPolicy{}).CurrencyOrDefault(); got != "USD" {
		t.Errorf("default currency %q, want USD", got)
	}
}

func TestSpendValidation(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{name: "empty section", doc: "spend: {}\n"},
		{name: "bad prices", doc: `spend:
  currency: US$
  completion_estimate: -1
  prices:
    - {backend: deepseek-ue, model: m, input: -1}
    - {backend: deepseek-ue, model: m, output: .nan}
    - {model: " m", cache_hit_input: 2e9}
`, want: []string{
			`spend.currency "US$" must be 1..16 letters`,
			"spend.completion_estimate: -1 must be in 0..10000000",
			`spend.prices[0]: backend "deepseek-ue" is not a backend or fallback of the document, did you mean deepseek-eu?`,
			"spend.prices[0].input: -1 must be in 0..1e9 (per million tokens)",
			`spend.prices[1]: backend "deepseek-ue" is not a backend or fallback of the document, did you mean deepseek-eu?`,
			"spend.prices[1]: same backend and model as spend.prices[0]",
			"spend.prices[1].output: NaN must be in 0..1e9 (per million tokens)",
			`spend.prices[2]: model " m" has leading or trailing spaces`,
			"spend.prices[2].cache_hit_input: 2e+09 must be in 0..1e9 (per million tokens)",
		}},
		{name: "bad limits", doc: `spend:
  tenants:
    - name: serch
      tpm: -5
    - name: billing
      tpm_burst: 10
      budget: {period: week, tokens: 5, amount: 1}
    - name: billing
      budget: {tokens: 0}
    - tpm: 1
  others:
    budget: {period: day, amount: 3}
`, want: []string{
			`spend.tenants[0]: "serch" is not a tenant of the document's tenants, did you mean search?; the tenants it does not list share spend.others`,
			"spend.tenants[0] (serch).tpm: -5 must be in 0..1e15",
			"spend.tenants[1] (billing).tpm_burst is set without tpm",
			`spend.tenants[1] (billing).budget.period "week" must be "day" or "month"`,
			"spend.tenants[1] (billing).budget: set tokens or amount, not both",
			"spend.tenants[2] (billing): given twice, first at spend.tenants[1]",
			`spend.tenants[2] (billing).budget.period is required: "day" or "month"`,
			"spend.tenants[2] (billing).budget: set tokens or amount (a budget of nothing refuses every call; remove the budget for none)",
			"spend.tenants[3]: name is required",
			"spend.others.budget.amount needs spend.prices: without them every call costs nothing",
		}},
		{name: "typo in a field", doc: "spend:\n  tenants:\n    - name: search\n      tmp: 5\n", want: []string{
			"spend.tenants[0].tmp: unknown field; the fields here are budget, name, tpm, tpm_burst (line 12)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]byte(spendBase + tt.doc))
			var got []string
			var ve *ValidationError
			if errors.As(err, &ve) {
				got = ve.Reasons
			} else if err != nil {
				t.Fatalf("Load: %v, want a *ValidationError", err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("reasons (-got +want):\n%s", diff)
			}
		})
	}
}
