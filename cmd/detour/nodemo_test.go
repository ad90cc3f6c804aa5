//go:build nodemo

package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestNoDemoInThisBuild(t *testing.T) {
	for _, args := range [][]string{{"demo"}, {"dev", "etcd"}} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
		if want := "go run ./cmd/detour " + strings.Join(args, " "); !strings.Contains(errOut.String(), want) {
			t.Errorf("run(%q) says %q, want it to name %q", args, errOut.String(), want)
		}
	}
}
