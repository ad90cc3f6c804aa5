package capacity

import (
	"math"
	"time"
)

// estimator learns one backend's concurrency limit from the outcomes of the
// calls made under it. It is a plain value guarded by its Limiter's mutex.
//
// Calls are grouped into cohorts by when they start: a cohort collects the
// calls started in a window of at least a few dozen calls, all under one
// limit, and is judged once they have all ended. (Grouping by end time would
// mix limits and would see a backend's fast busy answers before its slow
// good ones.) Each cohort's busy share is compared with the backend's usual
// busy share, its floor: busy answers that do not come from detour's own
// load, like a provider that answers half of all calls 503 whatever it is
// sent. Its answer latency is compared with the usual latency.
//
//   - Neither above usual (not even by half the margin of chance), and the
//     limit was in use: the limit grows,
//     doubling per cohort in slow start, then by an eighth per cohort while
//     well below the last limit that overloaded the backend, by a
//     sixty-fourth near it, and by a thirty-second above it.
//   - Above usual right after the limit grew: the growth overran the
//     backend; the limit steps back to the last one used without excess.
//   - A little above usual (up to 15%) near a limit already known to
//     overload the backend: the top of the sawtooth; the limit steps back
//     by the excess.
//   - Above usual: once the next cohort at the same limit confirms it (a
//     large excess is acted on at once), the estimator tests the hypothesis
//     that detour is overrunning the backend. It lowers the limit by the excess (busy
//     answers hold their slot for a call's duration, so a backend that can
//     take C calls answers busy to a share of about (L-C)/L of a limit L;
//     a limit far above what is used is cut from what is used) and judges
//     the first cohort started under the lower limit. A busy share that fell
//     with the limit confirms it: the lower limit stays (or goes half way
//     back when answers per second fell too: the cut went below the
//     backend's capacity), and the descent goes on while the excess lasts. A
//     busy share that held while answers per second fell refutes it: the
//     busy answers are the backend's own, the floor rises to them and the
//     limit goes back to where the descent started. A cut that cost no
//     answers stays, whatever the busy share did, and the descent goes on
//     while the excess lasts.
//   - In slow start each doubling is a test too: a busy share that rose with
//     the limit ends slow start at the limit before.
//   - Every so often a limit with a floor above zero is tested anyway, so
//     that a floor learned wrong is found out.
//
// The result is additive increase with a multiplicative decrease that must be
// earned: random busy answers, which no limit can reduce, never shrink the
// capacity detour uses.
type estimator struct {
	s Settings

	limit     float64
	slowStart bool    // no overload seen yet: double per cohort
	floor     float64 // the backend's usual busy share
	latBase   time.Duration
	okLat     time.Duration // EWMA of answered calls' duration
	lastMax   float64       // the limit at the last confirmed overload; 0: none
	lastGood  float64       // the limit of the last cohort that used it without excess
	sinceTest int           // cohorts judged since the last test ended
	recheck   int           // cohorts between re-checks of the floor
	inUse     int           // slots in use now (set by the Limiter before judging)

	gen     int64     // bumped at every limit change
	cur     *cohort   // the cohort calls join now
	pending []*cohort // closed cohorts waiting for their calls to end
	prev    summary   // the last judged cohort of the current generation
	confirm bool      // a signal was seen: the next cohort confirms it
	test    *test
	chain   float64 // limit before the current run of confirmed decreases; 0: none
	state   State

	trace func(format string, args ...any) // tests: decisions, when set

	share   float64   // EWMA of not-answered (busy, failed) per completion
	shareAt time.Time // when share was last updated, for its decay
}

// cohort is the calls started in one window under one limit.
type cohort struct {
	gen             int64
	start, closedAt time.Time
	closed          bool
	started, ended  int
	ok, busy        int
	okLat           time.Duration // sum
	refused, maxUse int
	limit           float64
}

// summary is a judged cohort.
type summary struct {
	n, busy int
	r       float64 // busy share of ok+busy
	good    float64 // answers per second of the window the calls started in
	el      time.Duration
	lat     time.Duration
	nOK     int
	binding bool
	maxUse  int
	limit   float64
}

// merge adds o (judged under the same limit) to s.
func (s summary) merge(o summary) summary {
	if o.n == 0 || o.limit != s.limit {
		return s
	}
	m := summary{n: s.n + o.n, busy: s.busy + o.busy, el: s.el + o.el, nOK: s.nOK + o.nOK,
		binding: s.binding || o.binding, maxUse: max(s.maxUse, o.maxUse), limit: s.limit}
	m.r = float64(m.busy) / float64(m.n)
	m.good = float64(m.nOK) / max(m.el.Seconds(), 1e-9)
	if m.nOK > 0 {
		m.lat = (s.lat*time.Duration(s.nOK) + o.lat*time.Duration(o.nOK)) / time.Duration(m.nOK)
	}
	return m
}

// test is a decrease under test: judged on the first cohort of generation
// gen.
type test struct {
	gen     int64
	saved   float64 // the limit before the decrease
	cut     float64 // the share taken off
	before  summary
	latency bool // the decrease was for latency, not busy answers
}

// Tuning constants; see the type comment.
const (
	minWindow       = 50 * time.Millisecond
	cohortCalls     = 64
	testCalls       = 128
	slowStartCalls  = 64
	defaultHold     = 100 * time.Millisecond
	shareAlpha      = 1.0 / 32
	shareDecay      = 10 * time.Second // busy share fades toward 0 without answers
	latAlpha        = 1.0 / 16
	latencyFactor   = 2.0 // a cohort this much slower than usual is a signal
	maxCut          = 0.5
	minCut          = 0.05
	recheckCut      = 0.2
	recheckEvery    = 100  // cohorts before the first re-check of a floor above zero
	maxRecheck      = 3200 // cohorts between re-checks at most
	slowStartGrowth = 2
	fastGrowth      = 1.0 / 8
	slowGrowth      = 1.0 / 32
	nearGrowth      = 1.0 / 64
	nudgeCut        = 0.15
	floorMin        = 0.005
	confidence      = 3.5
	stragglers      = 10 // a cohort is judged this many call times after it closed, ended or not
)

func newEstimator(s Settings, now time.Time) estimator {
	e := estimator{s: s, limit: float64(s.Initial), slowStart: true, state: SlowStart, shareAt: now, recheck: recheckEvery}
	e.open(now)
	return e
}

func (e *estimator) open(now time.Time) {
	e.cur = &cohort{gen: e.gen, start: now, limit: e.limit}
}

// hold is how long a busy answer keeps its slot: the usual answer time, so
// that a backend that is full is not asked again before a call could have
// finished.
func (e *estimator) hold() time.Duration {
	if e.okLat <= 0 {
		return defaultHold
	}
	return e.okLat
}

// callTime is the usual duration of a call, at least minWindow.
func (e *estimator) callTime() time.Duration { return max(minWindow, e.okLat) }

// begin records a call that took a slot, with inUse the slots in use after
// it, and returns its cohort.
func (e *estimator) begin(now time.Time, inUse int) *cohort {
	c := e.cur
	c.started++
	c.maxUse = max(c.maxUse, inUse)
	e.maybeClose(now)
	return c
}

// refused records a call that found no slot free.
func (e *estimator) refused(now time.Time) {
	e.cur.refused++
	e.maybeClose(now)
}

// maybeClose closes the current cohort once it has enough calls and time.
func (e *estimator) maybeClose(now time.Time) {
	c := e.cur
	el := now.Sub(c.start)
	want := cohortCalls
	switch {
	case e.test != nil, e.confirm:
		want = testCalls
	case e.slowStart:
		want = slowStartCalls
	}
	if (c.started >= want && el >= minWindow) || (c.started >= 8 && el >= stragglers*e.callTime()) {
		c.closed, c.closedAt = true, now
		e.pending = append(e.pending, c)
		e.open(now)
	}
}

// end records one finished call of cohort c and reports whether the limit
// changed.
func (e *estimator) end(now time.Time, c *cohort, o Outcome, d time.Duration) bool {
	c.ended++
	switch o {
	case Success:
		c.ok++
		c.okLat += d
		if e.okLat == 0 {
			e.okLat = d
		} else {
			e.okLat += time.Duration(latAlpha * float64(d-e.okLat))
		}
		e.addShare(now, 0)
	case Busy:
		c.busy++
		e.addShare(now, 1)
	case Failed:
		e.addShare(now, 1)
	}
	return e.judgeReady(now)
}

// judgeReady judges, in order, the closed cohorts whose calls have all
// ended (or that waited long enough for stragglers).
func (e *estimator) judgeReady(now time.Time) bool {
	before := e.limit
	for len(e.pending) > 0 {
		c := e.pending[0]
		if c.ended < c.started && now.Sub(c.closedAt) < stragglers*e.callTime() {
			break
		}
		e.pending = e.pending[1:]
		e.judgeCohort(now, c)
	}
	return e.limit != before
}

func (e *estimator) judgeCohort(now time.Time, c *cohort) {
	n := c.ok + c.busy
	if n == 0 {
		return
	}
	el := max(c.closedAt.Sub(c.start), time.Millisecond)
	s := summary{n: n, busy: c.busy, r: float64(c.busy) / float64(n), el: el,
		good: float64(c.ok) / el.Seconds(), nOK: c.ok, limit: c.limit, maxUse: c.maxUse,
		binding: c.refused > 0 || float64(c.maxUse) >= math.Floor(c.limit)}
	if c.ok > 0 {
		s.lat = c.okLat / time.Duration(c.ok)
	}
	if c.gen != e.gen {
		// Started under an older limit: it says nothing about this one.
		e.trackBaselines(s, false)
		return
	}
	old := e.limit
	e.decide(s)
	if e.limit != old {
		e.gen++
		e.prev = summary{}
		// The open cohort started under the old limit: start a new one.
		if e.cur.started > 0 {
			e.cur.closed, e.cur.closedAt = true, now
			e.pending = append(e.pending, e.cur)
		}
		e.open(now)
	}
}

func (e *estimator) addShare(now time.Time, x float64) {
	e.share = e.decayedShare(now)
	e.share += shareAlpha * (x - e.share)
	e.shareAt = now
}

func (e *estimator) decayedShare(now time.Time) float64 {
	dt := now.Sub(e.shareAt)
	if dt <= 0 {
		return e.share
	}
	return e.share * math.Exp(-float64(dt)/float64(shareDecay))
}

// noise is the busy share a cohort of n calls may show above the floor by
// chance.
func (e *estimator) noise(n int) float64 {
	f := max(e.floor, floorMin)
	return confidence*math.Sqrt(f*(1-f)/float64(n)) + 1/float64(n)
}

// signal reports whether s shows overload, and the share of the limit that
// the excess suggests is too much.
func (e *estimator) signal(s summary) (bool, float64, bool) {
	if s.n > 0 && s.r > e.floor+e.noise(s.n) {
		excess := (s.r - e.floor) / (1 - e.floor)
		hi := maxCut
		if excess > 0.6 {
			hi = 0.75 // far over: most of the limit is busy slots
		}
		return true, clamp(excess, minCut, hi), false
	}
	if s.binding && s.nOK >= 8 && e.latBase > 0 && float64(s.lat) > latencyFactor*float64(e.latBase) {
		return true, clamp(1-float64(e.latBase)/float64(s.lat), minCut, maxCut), true
	}
	return false, 0, false
}

func (e *estimator) tracef(format string, args ...any) {
	if e.trace != nil {
		e.trace(format, args...)
	}
}

func (e *estimator) decide(s summary) {
	e.tracef("cohort n=%d r=%.3f good=%.0f lat=%v binding=%v use=%d | limit=%.1f floor=%.3f test=%v",
		s.n, s.r, s.good, s.lat, s.binding, s.maxUse, e.limit, e.floor, e.test != nil)
	if t := e.test; t != nil {
		e.test = nil
		e.sinceTest = 0
		e.judge(t, s)
		return
	}
	if e.confirm {
		// The cohort after a signal, at the same limit: an unbiased
		// "before" for the test (the cohort that raised the signal was
		// picked for its high busy share, so it would make any cut look
		// like it helped). No excess here: it was chance.
		e.confirm = false
		e.prev = s
		if sig, cut, lat := e.signal(s); sig {
			e.start(s, cut, lat)
		}
		return
	}
	if e.slowStart {
		e.slowStep(s)
		return
	}
	e.sinceTest++
	window := s.merge(e.prev)
	e.prev = s
	sig, cut, lat := e.signal(window)
	e.trackBaselines(s, sig)
	if !sig && s.binding {
		e.lastGood = s.limit
	}
	if sig && !lat && e.lastGood > 0 && s.limit > e.lastGood && !e.slowStart {
		// The limit grew since the last cohort that used it without
		// excess: the growth overran the backend. Step back to where it was
		// fine; no test is needed to know that level.
		e.tracef("step back to %.1f", e.lastGood)
		e.lastMax = s.limit
		e.limit = e.lastGood
		e.state = Limited
		return
	}
	if sig && !lat && e.lastMax > 0 && cut <= nudgeCut {
		// A small excess near a ceiling already confirmed: the top of the
		// sawtooth. Step back by the excess without a test (a test of a
		// small cut cannot tell anything apart within one cohort's noise).
		e.tracef("nudge down %.2f", cut)
		e.lastMax = e.limit
		e.limit = e.clampLimit(e.limit * (1 - cut))
		e.state = Limited
		return
	}
	if sig {
		e.suspect(window, cut, lat)
		return
	}
	if !sig && e.floor > 0.05 && e.sinceTest >= e.recheck {
		// Is the floor still right? Each check that finds it right makes
		// the next one wait twice as long.
		e.recheck = min(2*e.recheck, maxRecheck)
		e.start(window, recheckCut, false)
		return
	}
	if sig || !s.binding || s.r > e.floor+e.noise(s.n)/2 {
		// Grow only on a cohort clearly at the floor: an excess too small
		// to act on still says "not more".
		return
	}
	switch {
	case e.lastMax > 0 && e.limit < 0.85*e.lastMax:
		// Well below the last ceiling: come back fast, but not past 90%
		// of it in one step.
		e.limit = max(e.limit+max(0.25, e.limit*nearGrowth), min(e.limit+max(1, e.limit*fastGrowth), 0.9*e.lastMax))
	case e.lastMax > 0 && e.limit < 1.05*e.lastMax:
		e.limit += max(0.25, e.limit*nearGrowth) // near the last ceiling: creep
	default:
		e.limit += max(0.5, e.limit*slowGrowth)
	}
	e.state = Growing
	if e.lastMax > 0 && e.limit > 1.25*e.lastMax {
		e.lastMax = 0 // well past the old ceiling: it has moved
	}
	e.limit = e.clampLimit(e.limit)
}

// slowStep is one cohort of slow start: the limit doubles while it is in use
// and answers show no busy share above the floor. Each doubling is itself a
// test: a busy share that rose with the limit means the doubling overran the
// backend, and the limit goes back to where it was. A busy share that is
// there but did not rise is put to the ordinary test (see start and judge),
// which either learns it as the floor and lets slow start go on, or
// confirms an overrun and ends it.
func (e *estimator) slowStep(s summary) {
	e.trackBaselines(s, false)
	p := e.prev
	e.prev = s
	if p.n > 0 && p.limit < s.limit && s.binding && s.r-p.r > 2*pooledSD(p, s)+1/float64(s.n) {
		e.tracef("slow start overran at %.1f (r %.3f -> %.3f)", s.limit, p.r, s.r)
		e.lastMax = s.limit
		e.slowStart = false
		e.state = Limited
		e.limit = e.clampLimit(max(p.limit, s.limit*(1-clamp((s.r-p.r)/(1-p.r), minCut, maxCut))))
		return
	}
	if sig, cut, lat := e.signal(s); sig {
		e.suspect(s, cut, lat)
		return
	}
	if s.binding {
		e.limit = e.clampLimit(e.limit * slowStartGrowth)
	}
}

// suspect acts on a signal: a large excess is tested at once; a moderate
// one is confirmed on the next cohort first (see decide).
func (e *estimator) suspect(s summary, cut float64, lat bool) {
	if cut >= maxCut {
		e.start(s, cut, lat)
		return
	}
	e.confirm = true
	e.state = Testing
}

// pooledSD is the standard deviation of the difference of two cohorts' busy
// shares, under the hypothesis that they share one.
func pooledSD(a, b summary) float64 {
	p := (float64(a.busy) + float64(b.busy)) / float64(max(a.n+b.n, 1))
	p = max(p, floorMin)
	return math.Sqrt(p * (1 - p) * (1/float64(max(a.n, 1)) + 1/float64(max(b.n, 1))))
}

// judge ends test t with the cohort s measured at the lower limit.
func (e *estimator) judge(t *test, s summary) {
	sig, cut, lat := e.signal(s)
	b := t.before
	var fell bool // the busy share (or latency) came down with the limit
	if t.latency {
		fell = s.nOK >= 8 && float64(s.lat) < 0.9*float64(b.lat)
	} else {
		fell = b.r-s.r > 2*pooledSD(b, s)+1/float64(max(s.n, 1))
	}
	held := b.good <= 0 || s.good >= b.good*(1-t.cut/2)
	// A busy share that rose while the limit fell says nothing about the
	// floor (the load or the backend changed under the test).
	rose := !t.latency && s.r-b.r > 2*pooledSD(b, s)+1/float64(max(s.n, 1))
	e.tracef("judge cut=%.2f before r=%.3f good=%.0f after r=%.3f good=%.0f binding=%v: fell=%v held=%v",
		t.cut, b.r, b.good, s.r, s.good, s.binding, fell, held)
	switch {
	case fell && held:
		// As many answers with fewer slots: detour was overrunning it.
		e.overrun(t, s)
		e.descend(s, sig, cut, lat)
	case held || rose:
		// The cut cost no answers but did not lower the busy share (the
		// limit was not what held calls back, or the overload is deeper),
		// or the busy share rose: keep it, and keep descending while the
		// signal lasts.
		e.descend(s, sig, cut, lat)
	case fell:
		// The cut went below what the backend takes: half way back.
		e.overrun(t, s)
		e.limit = e.clampLimit((e.limit + t.saved) / 2)
		e.chain = 0
	default:
		// Fewer answers and as many busy: the busy answers are the
		// backend's own, not detour's doing.
		if t.latency {
			e.latBase = max(e.latBase, b.lat)
		} else {
			e.floor = s.r // measured after the cut: not picked for its value
		}
		e.limit = max(e.chain, t.saved)
		e.chain = 0
		e.state = Growing
		if e.slowStart {
			e.state = SlowStart
		}
	}
}

// descend starts the next cut of a descent while the signal lasts, and ends
// the descent otherwise.
func (e *estimator) descend(s summary, sig bool, cut float64, lat bool) {
	if sig {
		e.start(s, cut, lat)
		return
	}
	e.chain = 0
	if e.state == Testing {
		e.state = Growing
	}
}

// overrun records a confirmed overrun at the limit t.saved.
func (e *estimator) overrun(t *test, s summary) {
	e.recheck = recheckEvery
	e.lastMax = t.saved
	e.slowStart = false
	e.state = Limited
	if !t.latency && s.r < e.floor {
		e.floor = s.r
	}
}

// trackBaselines follows the usual latency in cohorts that show no overload,
// and lowers the floor when the busy share clearly fell below it.
func (e *estimator) trackBaselines(s summary, sig bool) {
	if s.nOK >= 8 {
		switch {
		case e.latBase == 0 || s.lat < e.latBase:
			e.latBase = s.lat
		case !sig:
			e.latBase += (s.lat - e.latBase) / 50 // a slower normal comes in slowly
		}
	}
	// The floor comes down with the backend's busy share; it goes up only
	// when a test shows that busy answers do not come from detour's load
	// (see judge), never by drifting with a share that might.
	if s.n > 0 && s.r < e.floor-e.noise(s.n)/2 {
		e.floor += (s.r - e.floor) / 2
	}
}

func (e *estimator) start(before summary, cut float64, latency bool) {
	if e.chain == 0 {
		e.chain = e.limit
	}
	base := e.limit
	if used := max(before.maxUse, e.inUse); !before.binding && used > 0 {
		base = min(base, float64(used)) // cut from what is used
	}
	next := e.clampLimit(base * (1 - cut))
	if next >= base {
		// Already at the minimum: nothing to test.
		e.chain = 0
		return
	}
	e.test = &test{gen: e.gen + 1, saved: e.limit, cut: 1 - next/base, before: before, latency: latency}
	e.limit = next
	e.state = Testing
}

func (e *estimator) clampLimit(l float64) float64 {
	return min(max(l, float64(e.s.Min)), float64(e.s.Max))
}

func clamp(x, lo, hi float64) float64 { return min(max(x, lo), hi) }
