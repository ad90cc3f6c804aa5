package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProductionBuildLinksNoDemo holds the production build (-tags nodemo)
// to what `detour serve` needs: no embedded etcd server and no simulated
// backends, which only demo and dev use.
func TestProductionBuildLinksNoDemo(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command("go", "list", "-tags", "nodemo", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -tags nodemo -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	for _, bad := range []string{
		"go.etcd.io/etcd/server/v3/embed",
		"go.etcd.io/raft/v3",
		"go.etcd.io/bbolt",
		"github.com/detour-dev/detour/internal/devetcd",
		"github.com/detour-dev/detour/internal/fakellm",
	} {
		for _, d := range deps {
			if d == bad {
				t.Errorf("the production build links %s", bad)
			}
		}
	}
	// The check means something: the default build does link them.
	out, err = exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/detour-dev/detour/internal/devetcd\n") {
		t.Error("the default build does not link internal/devetcd: update this test's list")
	}
}
