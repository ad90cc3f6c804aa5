// Package gcfloor keeps the garbage collector's heap goal from falling
// below a floor.
//
// detour's live heap is a few MiB, so with the default GOGC=100 the runtime
// collects every few MiB of allocation: dozens of cycles a second under
// load, a large share of its CPU per call (bench hop, 2 cores: 70 µs of CPU
// per call with plain GOGC=100, 54 µs with a 16 MiB floor, peak RSS 34 and
// 45 MiB). A fixed higher GOGC would multiply the goal of a large live
// heap too (a full local cache tier); the floor does not.
// The floor raises GOGC only while the live heap is small: after every
// cycle it sets GOGC so that the next goal is max(floor, live x (1 +
// GOGC/100)). GOMEMLIMIT still applies on top.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// maxPercent bounds the GOGC set: with the runtime's 4 MiB heap minimum it
// allows floors up to MaxFloor.
const MaxFloor = heapMinimum * maxPercent / 100

// maxPercent bounds the GOGC set.
const maxPercent = 5000

// Start keeps the heap goal at least floor bytes until stop is called, which
// restores GOGC=base. It does nothing when the GOGC environment variable is
// set (an operator's explicit choice wins) or floor is 0. base is the GOGC
// used above the floor, normally 100.
func Start(floor uint64, base int) (stop func()) {
	t := start(floor, base)
	if t == nil {
		return func() {}
	}
	return t.stop
}

func start(floor uint64, base int) *tuner {
	if floor == 0 || os.Getenv("GOGC") != "" {
		return nil
	}
	t := &tuner{floor: floor, base: base}
	t.sample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t.tune()
	t.arm()
	return t
}

func (t *tuner) stop() {
	t.mu.Lock() // after any tuning in progress, so that base is the last word
	defer t.mu.Unlock()
	t.stopped.Store(true)
	debug.SetGCPercent(t.base)
}

type tuner struct {
	floor   uint64
	base    int
	stopped atomic.Bool
	mu      sync.Mutex // guards sample and orders tunings against stop
	sample  []metrics.Sample
	percent atomic.Int64 // last GOGC set, for tests
	cycles  atomic.Int64 // tunings done, for tests
}

// sentinel is an object that only a finalizer refers to: it becomes garbage
// at once, so its finalizer runs after the next cycle. Big enough to be
// its own allocation (finalizers of tiny-allocated objects may never run).
type sentinel struct {
	_ [32]byte
	_ *int
}

func (t *tuner) arm() {
	runtime.SetFinalizer(new(sentinel), func(*sentinel) {
		if t.stopped.Load() {
			return
		}
		t.tune()
		t.arm()
	})
}

func (t *tuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	p := percentFor(t.sample[0].Value.Uint64(), t.floor, t.base)
	debug.SetGCPercent(p)
	t.percent.Store(int64(p))
	t.cycles.Add(1)
}

// heapMinimum is the runtime's heap goal basis for a small heap: the goal
// is never below heapMinimum x GOGC/100 (runtime/mgcpacer.go).
const heapMinimum = 4 << 20

// percentFor returns the GOGC that makes the next heap goal max(floor,
// live x (1 + base/100)). The goal is max(heapMinimum x p/100, live x (1 +
// p/100)), so for a live heap under heapMinimum (and before the first
// cycle, when live is 0) the first term is the one to bound.
func percentFor(live, floor uint64, base int) int {
	p := int(float64(floor) * 100 / heapMinimum)
	if live > 0 {
		p = min(p, int(float64(floor)/float64(live)*100)-100)
	}
	return min(max(p, base), maxPercent)
}
