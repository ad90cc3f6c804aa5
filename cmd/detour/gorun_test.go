package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/detour-dev/detour/internal/testkit"
)

func TestStartedByGoRun(t *testing.T) {
	tests := []struct {
		exe  string
		want bool
	}{
		{"/tmp/go-build1066744996/b001/exe/detour", true},
		{"/home/ana/.cache/go-build/tmp/go-build42/b001/exe/detour", true},
		{"/usr/local/bin/detour", false},
		{"/home/ana/go/bin/detour", false},
		{"/tmp/go-build42/b001/detour.test", false},
		{"/srv/exe/detour", false},
	}
	for _, tt := range tests {
		if got := startedByGoRun(tt.exe); got != tt.want {
			t.Errorf("startedByGoRun(%q) = %v, want %v", tt.exe, got, tt.want)
		}
	}
}

// TestExitWithParent: the context ends once the parent pid changes (the
// parent exited and the process was reparented), not before; stop ends the
// watch either way.
func TestExitWithParent(t *testing.T) {
	var ppid atomic.Int64
	ppid.Store(4242)
	var told atomic.Bool
	ctx, stop := exitWithParent(context.Background(), func() int { return int(ppid.Load()) }, time.Millisecond, func() { told.Store(true) })
	defer stop()
	if ctx.Err() != nil || told.Load() {
		t.Fatal("ended while the parent was there")
	}
	ppid.Store(1)
	testkit.Until(t, 5*time.Second, "the context to end after the parent exited", func() bool { return ctx.Err() != nil })
	if !told.Load() {
		t.Error("gone was not called")
	}

	ctx2, stop2 := exitWithParent(context.Background(), func() int { return 7 }, time.Millisecond, func() {})
	stop2()
	if ctx2.Err() == nil {
		t.Error("stop did not end the context")
	}
}
