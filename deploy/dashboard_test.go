package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	dashboardPath = "grafana/detour.json"
	rulesPath     = "prometheus/rules.yaml"
)

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasource              `json:"datasource"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Targets    []struct {
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
		RefID        string      `json:"refId"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("%s is not valid JSON", dashboardPath)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

var reLegend = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)

func legendLabels(s string) []string {
	var out []string
	for _, m := range reLegend.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestDashboard checks that the dashboard is valid JSON, queries through its
// datasource variable, and that every expression uses only detour's metrics
// and their labels.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: query: %v", v.Name, err)
			continue
		}
		// label_values(SELECTOR, LABEL)
		m := regexp.MustCompile(`^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`).FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
			continue
		}
		for _, p := range checkExpr(m[1], nil, m[2]) {
			t.Errorf("variable %s: %s", v.Name, p)
		}
		if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("variable %s does not query through ${datasource}", v.Name)
		}
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no datasource variable named datasource (have %v)", vars)
	}

	ids := map[int]string{}
	used := map[string]bool{}
	var exprs []string
	for _, p := range allPanels(d.Panels) {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q, query %s: does not use the ${datasource} variable", p.Title, tg.RefID)
			}
			for _, problem := range checkExpr(tg.Expr, nil, legendLabels(tg.LegendFormat)...) {
				t.Errorf("panel %q: %s", p.Title, problem)
			}
			metrics, _, _ := exprRefs(tg.Expr)
			for _, m := range metrics {
				used[m] = true
			}
			exprs = append(exprs, tg.Expr)
		}
	}

	// What the issue asks the dashboard to show.
	for _, m := range []string{
		"detour_call_duration_seconds_bucket", // p99 latency
		"detour_calls_total",                  // error rate, fallback and stale-cache share
		"detour_breaker_state",
		"detour_retries_total", "detour_retry_budget_exhausted_total",
		"detour_upstream_connections_total", // pool use
		"detour_config_revision",
		"detour_fleet_redis_up", "detour_fleet_redis_errors_total", // shared state
		"detour_spend_total", "detour_savings_total", "detour_tokens_total", // spend per tenant
		"detour_budget_used", "detour_budget_limit", "detour_spend_rejections_total",
	} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	if !strings.Contains(strings.Join(exprs, "\n"), `source=~"fallback|stale_cache"`) {
		t.Error("no panel shows the fallback and stale-cache share")
	}

	// With promtool at hand, every expression must also parse.
	if promtool := os.Getenv("DETOUR_PROMTOOL"); promtool != "" {
		checkWithPromtool(t, promtool, exprs)
	}
}

// checkWithPromtool writes the expressions as recording rules, with Grafana's
// variables replaced by values, and lets `promtool check rules` parse them.
func checkWithPromtool(t *testing.T, promtool string, exprs []string) {
	t.Helper()
	r := strings.NewReplacer("$__rate_interval", "1m", "$namespace", ".*", "$job", ".*", "${datasource}", "")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, e := range exprs {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:expr_%d", i), Expr: r.Replace(e)})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-exprs.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules on the dashboard's expressions: %v\n%s", err, out)
	}
}

// TestRulesUseKnownMetrics checks rules.yaml the same way: alerts and
// recording rules use only detour's metrics, their labels, and the rules
// recorded in the file.
func TestRulesUseKnownMetrics(t *testing.T) {
	b, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Record      string            `json:"record"`
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &doc); err != nil {
		t.Fatal(err)
	}
	// Recording rules keep namespace, job and what they group by.
	recorded := map[string][]string{}
	alerts := map[string]string{}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				_, labels, err := exprRefs(r.Expr)
				if err != nil {
					t.Errorf("%s: %v", r.Record, err)
				}
				recorded[r.Record] = labels
			}
		}
	}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			name := r.Record + r.Alert
			var shown []string
			for _, a := range r.Annotations {
				for _, m := range regexp.MustCompile(`\$labels\.([A-Za-z_][A-Za-z0-9_]*)`).FindAllStringSubmatch(a, -1) {
					shown = append(shown, m[1])
				}
			}
			for _, p := range checkExpr(r.Expr, recorded, shown...) {
				t.Errorf("%s: %s", name, p)
			}
			if r.Alert != "" {
				alerts[r.Alert] = r.Labels["severity"]
				if r.Annotations["summary"] == "" || r.Annotations["description"] == "" || r.Annotations["runbook"] == "" {
					t.Errorf("%s: needs summary, description and runbook annotations", r.Alert)
				}
			}
		}
	}

	want := map[string]string{
		"DetourErrorRateWarning":     "warning",
		"DetourErrorRateCritical":    "critical",
		"DetourErrorRatePage":        "page",
		"DetourBreakerOpen":          "warning",
		"DetourLatencyP99High":       "warning",
		"DetourFirstChunkP99High":    "warning",
		"DetourConfigRejected":       "warning",
		"DetourServingLastKnownGood": "warning",
		"DetourShedding":             "warning",
		"DetourRedisUnreachable":     "warning",
		"DetourJobsBacklogGrowing":   "warning",
		"DetourTenantBudgetHigh":     "warning",
	}
	for a, sev := range want {
		if got, ok := alerts[a]; !ok || got != sev {
			t.Errorf("alert %s: severity %q (present: %v), want %q", a, got, ok, sev)
		}
	}
	for a := range alerts {
		if _, ok := want[a]; !ok {
			t.Errorf("alert %s is not known to this test: add it here and to rules_test.yaml", a)
		}
	}

	// Every alert has a promtool unit test.
	tests, err := os.ReadFile("prometheus/rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for a := range alerts {
		if !bytes.Contains(tests, []byte("alertname: "+a+"\n")) {
			t.Errorf("alert %s has no case in rules_test.yaml", a)
		}
	}
}

func TestExprRefs(t *testing.T) {
	tests := []struct {
		expr       string
		wantProbs  int
		wantMetric string
	}{
		{`sum by (backend, outcome) (rate(detour_upstream_attempts_total{job=~"$job"}[$__rate_interval]))`, 0, "detour_upstream_attempts_total"},
		{`histogram_quantile(0.99, sum by (le) (rate(detour_first_chunk_seconds_bucket[5m])))`, 0, "detour_first_chunk_seconds_bucket"},
		{`rate(detour_call_total[5m])`, 1, "detour_call_total"},                             // misspelt metric
		{`sum by (backnd) (detour_inflight)`, 1, "detour_inflight"},                         // misspelt label
		{`detour_calls_total{sorce="fallback"}`, 1, "detour_calls_total"},                   // misspelt matcher
		{`rat(detour_calls_total[5m])`, 1, ""},                                              // unknown function
		{`go_goroutines{instance="a"} + process_resident_memory_bytes`, 0, "go_goroutines"}, // standard collectors
		{`detour_calls_total offset 5m / ignoring(code) detour_calls_total`, 0, "detour_calls_total"},
	}
	for _, tt := range tests {
		probs := checkExpr(tt.expr, nil)
		if len(probs) != tt.wantProbs {
			t.Errorf("checkExpr(%q) = %q, want %d problems", tt.expr, probs, tt.wantProbs)
		}
		if tt.wantMetric == "" {
			continue
		}
		metrics, _, err := exprRefs(tt.expr)
		if err != nil || len(metrics) == 0 || metrics[0] != tt.wantMetric {
			t.Errorf("exprRefs(%q) = %q, %v; want first metric %s", tt.expr, metrics, err, tt.wantMetric)
		}
	}
}
