package deploy_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// productMetricsDir is where detour registers its metrics (metrics.go, and
// spend.go for the token and spend series).
const productMetricsDir = "../metrics"

// TestCatalogueMatchesProduct reads the metric definitions in detour's source
// (prometheus.NewCounterVec(prometheus.CounterOpts{Name: ...}, []string{...})
// and friends) and compares them with the catalogue the dashboard and rules
// are checked against, so that renaming a metric or a label breaks this test
// rather than a panel or an alert in production.
func TestCatalogueMatchesProduct(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(productMetricsDir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Skipf("no Go files in %s", productMetricsDir)
	}
	got := map[string][]string{}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(token.NewFileSet(), file, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		inspect(f, got)
	}
	if len(got) == 0 {
		t.Fatalf("found no detour_ metric in %s: has the way metrics are defined changed?", productMetricsDir)
	}
	if diff := cmp.Diff(got, metricLabels); diff != "" {
		t.Errorf("metrics in %s vs the catalogue in promql_test.go (-product +catalogue):\n%s\nUpdate the catalogue, then the dashboard, the rules and the README.", productMetricsDir, diff)
	}
}

// inspect adds the metric definitions of f to got, by name.
func inspect(f *ast.File, got map[string][]string) {
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !strings.HasPrefix(sel.Sel.Name, "New") {
			return true
		}
		if sel.Sel.Name == "NewDesc" && len(call.Args) >= 3 {
			// prometheus.NewDesc("name", "help", []string{labels}, nil):
			// metrics a collector reads at scrape time.
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok {
				return true
			}
			name, _ := strconv.Unquote(lit.Value)
			labels := []string{}
			if ls, ok := call.Args[2].(*ast.CompositeLit); ok {
				for _, e := range ls.Elts {
					if s, ok := e.(*ast.BasicLit); ok {
						l, _ := strconv.Unquote(s.Value)
						labels = append(labels, l)
					}
				}
			}
			if strings.HasPrefix(name, "detour_") {
				got[name] = labels
			}
			return true
		}
		opts, ok := call.Args[0].(*ast.CompositeLit)
		if !ok {
			return true
		}
		name := ""
		for _, e := range opts.Elts {
			if kv, ok := e.(*ast.KeyValueExpr); ok {
				if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Name" {
					if lit, ok := kv.Value.(*ast.BasicLit); ok {
						name, _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
		if !strings.HasPrefix(name, "detour_") {
			return true
		}
		labels := []string{}
		if len(call.Args) > 1 {
			if lit, ok := call.Args[1].(*ast.CompositeLit); ok {
				for _, e := range lit.Elts {
					if s, ok := e.(*ast.BasicLit); ok {
						l, _ := strconv.Unquote(s.Value)
						labels = append(labels, l)
					}
				}
			}
		}
		got[name] = labels
		return true
	})
}
