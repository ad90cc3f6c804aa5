package router

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/fleet"
)

// maxLevels bounds the regions order handles without allocating.
const maxLevels = 8

// order fills buf with the primaries that may take a call's next attempt for
// model, best first, and returns it with the soonest time a backend skipped
// because its breaker (or the fleet's cooldown) holds it open admits a call
// again (zero when none was skipped).
//
// Regions are levels, as Envoy's priorities: the preferred region first, the
// others by priority, and avoid (the region of the call's last busy answer)
// last. The first attempt's region is drawn: each level keeps a share of
// the calls that reach it equal to its backends' recent answered share times
// the spill factor (at most all of them), and passes the rest to the next; a
// draw that passes every level falls to the healthiest. So, when every
// region is partly busy, a region that answers half its calls busy keeps half
// of them, and the other half goes where it is more likely to be answered at
// once; a busy region with a healthy one after it keeps only a probe share
// (see keep); a sole backend keeps everything. Within the drawn region the backend chosen by weighted power
// of two choices comes first, then its other backends; then the other
// regions, in order, their backends by score. Backends the call tried
// already go last, so a retry prefers a fresh one but may come back to the
// same backend when there is no other.
//
// Whether a backend has room under its capacity limit is not decided here:
// the caller takes the first one that has.
func (t *table) order(buf []*backend, now time.Time, model, prefer, avoid, zone string, tried []*backend, spill float64) ([]*backend, time.Time) {
	var lv [maxLevels]level
	levels := lv[:0]
	var soonest time.Time
	addGroup := func(g *group) {
		l := level{g: g}
		for _, b := range g.backends {
			if !b.serves(model) {
				continue
			}
			if until := b.closedUntil(now, t.cool); !until.IsZero() {
				if soonest.IsZero() || until.Before(soonest) {
					soonest = until
				}
				continue
			}
			l.n++
			w := float64(b.cfg.EffectiveWeight())
			l.health += w * (1 - b.lim.BusyShare())
			l.weight += w
		}
		if l.n > 0 {
			l.health /= l.weight
			levels = append(levels, l)
		}
	}
	var avoided *group
	for _, g := range t.groups {
		if g.name == prefer && g.name != avoid {
			addGroup(g)
		}
	}
	for _, g := range t.groups {
		switch {
		case g.name == avoid && avoid != "":
			avoided = g
		case g.name != prefer:
			addGroup(g)
		}
	}
	if avoided != nil {
		addGroup(avoided)
	}
	if len(levels) == 0 {
		return buf, soonest
	}
	chosen := 0
	if len(levels) > 1 {
		chosen = draw(levels, spill)
	}
	out := buf
	out = levels[chosen].g.appendOrdered(out, now, model, zone, t.cool, true)
	for i, l := range levels {
		if i != chosen {
			out = l.g.appendOrdered(out, now, model, zone, t.cool, false)
		}
	}
	// Tried backends last, keeping the order otherwise.
	if len(tried) > 0 {
		slices.SortStableFunc(out, func(a, b *backend) int {
			ta, tb := slices.Contains(tried, a), slices.Contains(tried, b)
			switch {
			case ta == tb:
				return 0
			case tb:
				return -1
			}
			return 1
		})
	}
	return out, soonest
}

// level is one region as order sees it.
type level struct {
	g              *group
	n              int     // available backends
	health, weight float64 // weighted mean answered share, total weight
}

// draw picks the level of a first attempt: level i keeps keep(levels, i,
// spill) of what reaches it; the healthiest takes what passes every level.
func draw(levels []level, spill float64) int {
	u := rand.Float64()
	for i := range levels {
		p := keep(levels, i, spill)
		if u < p {
			return i
		}
		if p < 1 {
			u = (u - p) / (1 - p)
		}
	}
	best := 0
	for i, l := range levels {
		if l.health > levels[best].health {
			best = i
		}
	}
	return best
}

// probeShare is what a level keeps of the first attempts that reach it
// while a later level is clearly healthier: enough to see it recover.
const probeShare = 0.05

// healthyShare is the answered share from which a level counts as healthy.
const healthyShare = 0.95

// keep is the share of the first attempts reaching level i that it keeps:
// its answered share times spill (at most 1), so that when every region is
// partly busy each keeps what it can answer; but only probeShare while a
// later level is healthy (busy on under 5% of its calls) and this one is
// clearly not (10 points below it): a call sent there is answered at once.
// When that level fills up its busy share rises and the levels share the
// load by health again; a call that finds it full takes the next backend
// with room.
func keep(levels []level, i int, spill float64) float64 {
	h := levels[i].health
	p := min(1, h*spill)
	for _, l := range levels[i+1:] {
		if l.health >= healthyShare && l.health-h >= 0.1 {
			return min(p, probeShare)
		}
	}
	return p
}

// appendOrdered appends the group's available backends for model: with
// first, the one weighted power of two choices picks, then the rest by
// score; otherwise all by score.
func (g *group) appendOrdered(out []*backend, now time.Time, model, zone string, cool *fleet.Cooldowns, first bool) []*backend {
	start := len(out)
	total := 0
	for _, b := range g.backends {
		if b.serves(model) && b.closedUntil(now, cool).IsZero() {
			out = append(out, b)
			total += b.cfg.EffectiveWeight()
		}
	}
	ok := out[start:]
	if len(ok) < 2 {
		return out
	}
	if first {
		a := weighted(ok, total, nil)
		c := weighted(ok, total-a.cfg.EffectiveWeight(), a)
		if c.score(now, zone) < a.score(now, zone) {
			a = c
		}
		i := slices.Index(ok, a)
		ok[0], ok[i] = ok[i], ok[0]
		ok = ok[1:]
	}
	slices.SortFunc(ok, func(a, b *backend) int {
		sa, sb := a.score(now, zone), b.score(now, zone)
		switch {
		case sa < sb:
			return -1
		case sa > sb:
			return 1
		}
		return 0
	})
	return out
}

// weighted draws a backend other than skip with probability proportional to
// its weight; total is the sum of the weights of bs without skip.
func weighted(bs []*backend, total int, skip *backend) *backend {
	n := rand.IntN(max(total, 1))
	for _, b := range bs {
		if b == skip {
			continue
		}
		n -= b.cfg.EffectiveWeight()
		if n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}

// score is lower for a backend that should get the next call: a lower
// recent cost (busy answers count as expensive), fewer in-flight calls per
// unit of weight, and in the caller's zone. A backend that has calls in
// flight but has not finished one yet costs busyPenalty, as in Finagle's
// and Linkerd's peak EWMA: at no cost it would beat every backend that has
// answered, and one whose calls hang would draw ever more of them.
func (b *backend) score(now time.Time, zone string) float64 {
	inflight := b.inflight.Load()
	cost := b.load.get(now)
	if cost == 0 && inflight > 0 {
		cost = busyPenalty.Seconds()
	}
	s := (cost + 0.001) * float64(inflight+1) / float64(b.cfg.EffectiveWeight())
	if zone != "" && b.cfg.Zone != "" && b.cfg.Zone != zone {
		s *= 1.5
	}
	return s
}

func (b *backend) serves(model string) bool {
	return !b.drained.Load() && b.cfg.Serves(model)
}

// closedUntil returns when b takes calls again if its breaker is open here
// or another replica holds it open, and the zero time when it takes calls
// now.
func (b *backend) closedUntil(now time.Time, cool *fleet.Cooldowns) time.Time {
	if until := cool.OpenUntil(b.cfg.Name); !until.IsZero() && now.Before(until) {
		if own := b.br.OpenUntil(); own.After(until) {
			return own
		}
		return until
	}
	if b.br.State() == breaker.Open {
		if until := b.br.OpenUntil(); !until.IsZero() {
			return until
		}
		return now.Add(time.Millisecond)
	}
	return time.Time{}
}
