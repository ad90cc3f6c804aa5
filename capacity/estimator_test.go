package capacity

import (
	"testing"
	"time"
)

func newTestEstimator(limit float64) *estimator {
	e := newEstimator(Settings{}.withDefaults(), t0)
	e.limit = limit
	return &e
}

// cohortOf is a judged cohort of n calls, busy of them busy, started over el
// under limit, with every slot in use.
func cohortOf(n, busy int, el time.Duration, limit float64) summary {
	s := summary{n: n, busy: busy, r: float64(busy) / float64(n), el: el, nOK: n - busy, limit: limit,
		binding: true, maxUse: int(limit), lat: 50 * time.Millisecond}
	s.good = float64(s.nOK) / el.Seconds()
	return s
}

func TestSlowStartDoublesWhileInUse(t *testing.T) {
	e := newTestEstimator(16)
	e.decide(cohortOf(64, 0, 100*time.Millisecond, 16))
	if e.limit != 32 {
		t.Errorf("limit %v after a busy-free cohort in use, want 32", e.limit)
	}
	idle := cohortOf(64, 0, 100*time.Millisecond, 32)
	idle.binding, idle.maxUse = false, 10
	e.decide(idle)
	if e.limit != 32 {
		t.Errorf("limit %v after a cohort that did not use it, want 32 kept", e.limit)
	}
}

// TestOverrunIsConfirmedAndHeld: a busy share above the floor starts a test
// at a lower limit; a busy share that falls there while answers per second
// hold confirms that detour overran the backend: the lower limit stays and
// slow start ends.
func TestOverrunIsConfirmedAndHeld(t *testing.T) {
	e := newTestEstimator(100)
	e.slowStart = false
	// 100 slots, 20% busy: the backend takes about 80. The next cohort
	// confirms the excess (an unbiased "before"), then the test starts.
	e.decide(cohortOf(128, 26, 100*time.Millisecond, 100))
	if e.test != nil || !e.confirm {
		t.Fatalf("a moderate excess started a test at once (test %v, confirm %v), want a confirming cohort first", e.test != nil, e.confirm)
	}
	e.decide(cohortOf(128, 26, 100*time.Millisecond, 100))
	if e.test == nil || e.limit >= 100 {
		t.Fatalf("no test started: limit %v", e.limit)
	}
	lower := e.limit
	if lower < 75 || lower > 85 {
		t.Errorf("lowered to %v, want about 80 (the busy excess taken off)", lower)
	}
	// As many answers per second at the lower limit, none busy.
	e.judge(e.test, cohortOf(128, 0, 100*time.Millisecond*128/102, lower))
	if e.limit != lower || e.state != Limited || e.slowStart {
		t.Errorf("after confirmation: limit %v state %v slowStart %v; want %v, limited, false", e.limit, e.state, e.slowStart, lower)
	}
}

// TestRandomBusyRaisesTheFloor: a busy share that does not fall when the
// limit falls, while answers per second do, is the backend's own: the floor
// rises to it and the limit goes back. A later cohort with the same share
// starts no test.
func TestRandomBusyRaisesTheFloor(t *testing.T) {
	e := newTestEstimator(100)
	e.slowStart = false
	e.decide(cohortOf(128, 64, 100*time.Millisecond, 100)) // 50% busy: a large excess
	if e.test == nil {
		t.Fatal("no test started")
	}
	lower := e.limit
	// Half the slots, half the answers, still 50% busy.
	e.judge(e.test, cohortOf(128, 64, 200*time.Millisecond, lower))
	if e.limit != 100 {
		t.Errorf("limit %v after a refuted test, want 100 restored", e.limit)
	}
	if e.floor < 0.45 || e.floor > 0.55 {
		t.Errorf("floor %v, want about 0.5", e.floor)
	}
	e.decide(cohortOf(128, 66, 100*time.Millisecond, 100))
	if e.test != nil {
		t.Error("a cohort at the floor started a test")
	}
}

// TestSmallExcessNearACeilingStepsBack: at the top of the sawtooth, just
// above a limit known to overload the backend, a small excess lowers the
// limit by that excess without a test.
func TestSmallExcessNearACeilingStepsBack(t *testing.T) {
	e := newTestEstimator(105)
	e.slowStart, e.lastMax = false, 100
	e.decide(cohortOf(128, 10, 100*time.Millisecond, 105))
	if e.test != nil {
		t.Fatal("a small excess near the ceiling started a test")
	}
	if e.limit >= 105 || e.limit < 95 {
		t.Errorf("limit %v, want stepped back by the ~8%% excess", e.limit)
	}
}

func TestLimitStaysInBounds(t *testing.T) {
	e := newEstimator(Settings{Initial: 4, Min: 2, Max: 8}.withDefaults(), t0)
	for range 5 {
		e.decide(cohortOf(64, 0, 100*time.Millisecond, e.limit))
	}
	if e.limit != 8 {
		t.Errorf("limit %v after growth, want Max 8", e.limit)
	}
	e.slowStart = false
	for range 10 {
		e.test = nil
		e.decide(cohortOf(64, 60, 100*time.Millisecond, e.limit))
	}
	if e.limit < 2 {
		t.Errorf("limit %v, want at least Min 2", e.limit)
	}
}
