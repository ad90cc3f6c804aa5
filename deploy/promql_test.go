// Package deploy_test checks what deploy/ ships: the Helm chart's rendered
// manifests (decoded strictly into the Kubernetes API types), the Grafana
// dashboard and the Prometheus rules (they may only use detour's metrics).
package deploy_test

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// metricLabels is the catalogue of detour's metrics and their labels (see
// README, "Operating detour"). Histograms are listed by base name.
var metricLabels = map[string][]string{
	"detour_calls_total":                      {"method", "code", "source"},
	"detour_calls_shed_total":                 {"method"},
	"detour_calls_inflight":                   {},
	"detour_calls_inflight_limit":             {},
	"detour_call_duration_seconds":            {"method"},
	"detour_first_chunk_seconds":              {},
	"detour_overhead_seconds":                 {"method"},
	"detour_upstream_attempts_total":          {"backend", "region", "outcome"},
	"detour_upstream_duration_seconds":        {"backend"},
	"detour_breaker_state":                    {"backend"},
	"detour_breaker_transitions_total":        {"backend", "to"},
	"detour_retries_total":                    {},
	"detour_retry_budget_exhausted_total":     {},
	"detour_retry_budget_spent":               {},
	"detour_retry_budget_allowed":             {},
	"detour_panic_attempts_total":             {"backend"},
	"detour_backend_capacity_limit":           {"backend", "region"},
	"detour_backend_capacity_inflight":        {"backend", "region"},
	"detour_backend_capacity_held":            {"backend", "region"},
	"detour_backend_capacity_queued":          {"backend", "region"},
	"detour_backend_busy_share":               {"backend", "region"},
	"detour_backend_busy_floor":               {"backend", "region"},
	"detour_limit_rejections_total":           {"backend", "reason"},
	"detour_quota_rejections_total":           {"tenant"},
	"detour_inflight":                         {"backend"},
	"detour_upstream_connections_total":       {"backend", "reused"},
	"detour_cache_requests_total":             {"tier", "result"},
	"detour_tokens_total":                     {"backend", "model", "tenant", "kind"},
	"detour_spend_total":                      {"backend", "model", "tenant", "currency"},
	"detour_tokens_saved_total":               {"backend", "model", "tenant"},
	"detour_savings_total":                    {"backend", "model", "tenant", "currency"},
	"detour_spend_rejections_total":           {"tenant", "limit"},
	"detour_budget_used":                      {"tenant", "period", "unit"},
	"detour_budget_limit":                     {"tenant", "period", "unit"},
	"detour_first_token_seconds":              {"backend"},
	"detour_stream_hedges_total":              {"result"},
	"detour_stream_continuations_total":       {"result"},
	"detour_stream_truncations_total":         {"backend"},
	"detour_config_revision":                  {},
	"detour_config_applies_total":             {},
	"detour_config_rejections_total":          {},
	"detour_config_last_known_good":           {},
	"detour_config_applied_timestamp_seconds": {},
	"detour_fleet_redis_up":                   {},
	"detour_fleet_redis_errors_total":         {},
	"detour_jobs_queued":                      {"tenant", "class"},
	"detour_jobs_running":                     {"tenant", "class"},
	"detour_jobs_oldest_queued_seconds":       {"tenant", "class"},
	"detour_jobs_submitted_total":             {"class", "result"},
	"detour_jobs_finished_total":              {"class", "outcome"},
	"detour_jobs_deferred_total":              {"reason"},
	"detour_background_preempted_total":       {"backend"},
}

var histograms = []string{
	"detour_call_duration_seconds",
	"detour_first_chunk_seconds",
	"detour_overhead_seconds",
	"detour_upstream_duration_seconds",
}

// targetLabels are added by Prometheus and the Prometheus Operator.
var targetLabels = []string{"namespace", "job", "instance", "pod", "service", "container", "endpoint"}

// metricInfo resolves a series name to its catalogue entry: labels, and
// whether the name is known at all. go_* and process_* (client_golang's
// standard collectors) are accepted with any label.
func metricInfo(name string, extra map[string][]string) (labels []string, anyLabel, ok bool) {
	if l, ok := metricLabels[name]; ok {
		return l, false, true
	}
	if l, ok := extra[name]; ok {
		return l, false, true
	}
	for _, h := range histograms {
		switch name {
		case h + "_bucket":
			return append(slices.Clone(metricLabels[h]), "le"), false, true
		case h + "_sum", h + "_count":
			return metricLabels[h], false, true
		}
	}
	if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
		return nil, true, true
	}
	return nil, false, false
}

// promqlWords are PromQL's functions, aggregations and keywords.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`
		sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
		by without on ignoring group_left group_right bool and or unless offset atan2
		abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
		day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction
		histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters idelta increase
		irate label_join label_replace ln log2 log10 minute hour month predict_linear rate resets round
		scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year
		avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time
		stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
		acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi inf nan`) {
		promqlWords[w] = true
	}
}

var (
	reVariable  = regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?`)
	reString    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	reMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	reRange     = regexp.MustCompile(`\[[^\[\]]*\]`)
	reGrouping  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)`)
	reToken     = regexp.MustCompile(`[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*`)
	reLabelName = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
)

// exprRefs returns the series names an expression selects and the label
// names it uses (in matchers and grouping clauses). It is a tokenizer, not a
// parser: enough to catch a misspelt metric or label, which is what silently
// breaks a panel or an alert.
func exprRefs(expr string) (metrics, labels []string, err error) {
	s := reVariable.ReplaceAllString(expr, "")
	s = reString.ReplaceAllString(s, `""`)
	for _, m := range reMatchers.FindAllString(s, -1) {
		for _, l := range reLabelName.FindAllStringSubmatch(m, -1) {
			labels = append(labels, l[1])
		}
	}
	s = reMatchers.ReplaceAllString(s, " ")
	s = reRange.ReplaceAllString(s, " ")
	for _, g := range reGrouping.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(g[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	s = reGrouping.ReplaceAllString(s, " ")
	if strings.ContainsAny(s, "{}[]\"") {
		return nil, nil, fmt.Errorf("unbalanced braces, brackets or quotes in %q", expr)
	}
	for _, loc := range reToken.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' {
			continue
		}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if promqlWords[tok] {
			continue
		}
		if strings.HasPrefix(rest, "(") {
			return nil, nil, fmt.Errorf("unknown function %s in %q", tok, expr)
		}
		metrics = append(metrics, tok)
	}
	sort.Strings(metrics)
	sort.Strings(labels)
	return slices.Compact(metrics), slices.Compact(labels), nil
}

// checkExpr reports every unknown metric, and every label that none of the
// expression's metrics has. extra adds names (recording rules) and their labels.
// legendLabels are labels that a legend ({{label}}) or an annotation shows.
func checkExpr(expr string, extra map[string][]string, legendLabels ...string) []string {
	metrics, labels, err := exprRefs(expr)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	known := map[string]bool{}
	for _, l := range targetLabels {
		known[l] = true
	}
	anyLabel := false
	for _, m := range metrics {
		ls, any, ok := metricInfo(m, extra)
		if !ok {
			problems = append(problems, fmt.Sprintf("unknown metric %s in %q", m, expr))
			continue
		}
		anyLabel = anyLabel || any
		for _, l := range ls {
			known[l] = true
		}
	}
	if anyLabel {
		return problems
	}
	for _, l := range append(labels, legendLabels...) {
		if !known[l] {
			problems = append(problems, fmt.Sprintf("label %s is not a label of %v in %q", l, metrics, expr))
		}
	}
	return problems
}
