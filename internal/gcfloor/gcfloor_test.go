package gcfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		live, floor uint64
		base, want  int
	}{
		{live: 4 * mib, floor: 24 * mib, base: 100, want: 500},  // goal 24 MiB
		{live: 12 * mib, floor: 24 * mib, base: 100, want: 100}, // 2 x live = floor
		{live: 20 * mib, floor: 24 * mib, base: 100, want: 100}, // base already above the floor
		{live: 100 * mib, floor: 24 * mib, base: 100, want: 100},
		{live: 1, floor: 24 * mib, base: 100, want: 600},       // the heap minimum binds: 4 MiB x 6
		{live: 0, floor: 24 * mib, base: 100, want: 600},       // before the first cycle
		{live: 2 * mib, floor: 24 * mib, base: 100, want: 600}, // 4 MiB x 6 = 24 MiB (2 MiB x 7 is under it)
		{live: 1, floor: 1 << 40, base: 100, want: maxPercent}, // capped
		{live: 4 * mib, floor: 24 * mib, base: 800, want: 800},
	} {
		if got := percentFor(tt.live, tt.floor, tt.base); got != tt.want {
			t.Errorf("percentFor(%d, %d, %d) = %d, want %d", tt.live, tt.floor, tt.base, got, tt.want)
		}
	}
}

// TestStartTunesAfterEachCycle: GOGC is set again after every GC cycle,
// and stop restores the base.
func TestStartTunesAfterEachCycle(t *testing.T) {
	t.Setenv("GOGC", "") // Start's check; the runtime read GOGC at start-up
	defer debug.SetGCPercent(100)
	tu := start(1<<40, 100) // a floor no test heap reaches: GOGC goes to the cap
	if tu == nil {
		t.Fatal("start did nothing")
	}
	n := tu.cycles.Load()
	deadline := time.Now().Add(10 * time.Second)
	for tu.cycles.Load() < n+3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d tunings after GC cycles, want 3", tu.cycles.Load()-n)
		}
		runtime.GC()
		time.Sleep(time.Millisecond) // let the finalizer goroutine run
	}
	if p := tu.percent.Load(); p != maxPercent {
		t.Errorf("GOGC set to %d, want the cap %d", p, maxPercent)
	}
	if p := debug.SetGCPercent(100); p != maxPercent {
		t.Errorf("runtime GOGC = %d, want %d", p, maxPercent)
	}
	tu.stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("after stop GOGC = %d, want 100", p)
	}
	n = tu.cycles.Load()
	runtime.GC()
	runtime.GC()
	if tu.cycles.Load() != n {
		t.Error("tuning went on after stop")
	}
}

func TestStartRespectsGOGC(t *testing.T) {
	t.Setenv("GOGC", "150")
	if start(1<<40, 100) != nil {
		t.Error("the tuner started although GOGC is set")
	}
	if start(0, 100) != nil {
		t.Error("the tuner started with floor 0")
	}
}
