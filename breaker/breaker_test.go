package breaker

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sony/gobreaker/v2"

	"github.com/detour-dev/detour/internal/testkit"
)

// t0 is where every fake clock starts.
var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// clock is a fake clock that only moves when told to.

type clock = testkit.Clock

func newClock() *clock { return testkit.NewClock(t0) }

// recorder records state changes, as an OnChange hook should: briefly, under
// its own lock.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) record(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) get() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

// transitions renders changes as "from->to".
func (r *recorder) transitions() []string {
	var s []string
	for _, c := range r.get() {
		s = append(s, c.From.String()+"->"+c.To.String())
	}
	return s
}

// testPolicy trips after 3 failures or 3 busy answers in a row, or at a 50%
// busy share of at least 10 answers in an hour; it opens for 5s and admits 2
// probes.
var testPolicy = Settings{
	ConsecutiveFailures: 3,
	ConsecutiveBusy:     3,
	BusyRatio:           0.5,
	MinRequests:         10,
	Window:              time.Hour,
	OpenFor:             5 * time.Second,
	HalfOpenProbes:      2,
}

func newTest(t *testing.T, p Settings) (*Breaker, *clock, *recorder) {
	t.Helper()
	clk, rec := newClock(), &recorder{}
	return New("b1", p, WithClock(clk.Now), WithOnChange(rec.record)), clk, rec
}

// call runs one call through b that ends with class and retryAfter.
func call(b *Breaker, class Class, retryAfter time.Duration) error {
	done, err := b.Allow()
	if err != nil {
		return err
	}
	done(class, retryAfter)
	return nil
}

func repeat(n int, classes ...Class) []Class {
	var s []Class
	for range n {
		s = append(s, classes...)
	}
	return s
}

func concat(parts ...[]Class) []Class {
	var s []Class
	for _, p := range parts {
		s = append(s, p...)
	}
	return s
}

func TestBreakerTrips(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []Class
		want     State
	}{
		{name: "busy in a row trips", outcomes: repeat(3, Busy), want: Open},
		{name: "fewer busy than ConsecutiveBusy", outcomes: repeat(2, Busy), want: Closed},
		{name: "failures in a row trip", outcomes: []Class{Failed, Down, Failed}, want: Open},
		{name: "a busy answer ends a run of failures", outcomes: []Class{Down, Down, Busy, Down}, want: Closed},
		{name: "failures do not end a run of busy", outcomes: []Class{Busy, Busy, Down, Busy}, want: Open},
		{name: "ok breaks the run", outcomes: []Class{Busy, Busy, OK, Busy, Busy}, want: Closed},
		{name: "client errors never trip", outcomes: repeat(50, Client), want: Closed},
		{name: "canceled never trips", outcomes: repeat(50, Canceled), want: Closed},
		{
			name:     "client errors do not break a run either",
			outcomes: concat(repeat(2, Busy), repeat(5, Client), []Class{Busy}),
			want:     Open,
		},
		{
			name:     "canceled does not break a run either",
			outcomes: concat(repeat(2, Busy), repeat(5, Canceled), []Class{Busy}),
			want:     Open,
		},
		{
			name:     "ratio trips once MinRequests answered",
			outcomes: repeat(5, OK, Busy), // 10 answers, 50% busy
			want:     Open,
		},
		{
			name:     "ratio ignored below MinRequests",
			outcomes: concat(repeat(4, OK, Busy), []Class{Busy}), // 9 answers, 56% busy
			want:     Closed,
		},
		{
			name:     "client errors do not make up MinRequests",
			outcomes: concat([]Class{Client}, repeat(4, OK, Busy), []Class{Busy}),
			want:     Closed,
		},
		{
			name:     "canceled calls do not make up MinRequests",
			outcomes: concat([]Class{Canceled}, repeat(4, OK, Busy), []Class{Busy}),
			want:     Closed,
		},
		{
			name:     "ratio below BusyRatio",
			outcomes: repeat(10, OK, OK, Busy), // 30 answers, 33% busy
			want:     Closed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk, _ := newTest(t, testPolicy)
			for i, c := range tt.outcomes {
				if i == len(tt.outcomes)-1 {
					clk.Advance(time.Second) // a busy ratio counts over a sustained span
				}
				if err := call(b, c, 0); err != nil {
					t.Fatalf("call %d (%v): Allow() = %v, want admitted", i, c, err)
				}
			}
			if diff := cmp.Diff(tt.want, b.State()); diff != "" {
				t.Errorf("State() (-want +got):\n%s", diff)
			}
			_, err := b.Allow()
			if got, want := errors.Is(err, ErrOpen), tt.want == Open; got != want {
				t.Errorf("Allow() = %v, want ErrOpen: %v", err, want)
			}
		})
	}
}

// TestBreakerWindowForgets checks that answers older than Window stop
// counting. gobreaker ages its window on the wall clock and takes no clock,
// so this test waits for real time; it only needs at least 2*Window to pass,
// so a slow machine cannot make it fail.
func TestBreakerWindowForgets(t *testing.T) {
	const window = 20 * time.Millisecond
	p := Settings{BusyRatio: 1, MinRequests: 3, Window: window}
	b, clk, _ := newTest(t, p)
	call(b, Busy, 0)
	call(b, Busy, 0)
	start := time.Now()
	for time.Since(start) < 2*window {
		runtime.Gosched()
	}
	call(b, Busy, 0)
	if s := b.State(); s != Closed {
		t.Errorf("2 busy, %v, then 1 busy: State() = %v, want closed", 2*window, s)
	}
	call(b, Busy, 0)
	clk.Advance(window) // the ratio counts over a sustained span (the window here)
	call(b, Busy, 0)
	if s := b.State(); s != Open {
		t.Errorf("then 2 more busy: State() = %v, want open", s)
	}
}

func TestBreakerDefaults(t *testing.T) {
	got := Settings{}.withDefaults()
	want := Settings{
		ConsecutiveFailures: 5,
		BusyRatio:           0.95,
		MinRequests:         50,
		Window:              10 * time.Second,
		OpenFor:             5 * time.Second,
		MaxOpen:             2 * time.Minute,
		HalfOpenProbes:      3,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("zero.withDefaults() (-want +got):\n%s", diff)
	}

	t.Run("a dead backend trips after 5 failures", func(t *testing.T) {
		b, _, _ := newTest(t, Settings{})
		for range 4 {
			call(b, Down, 0)
		}
		if s := b.State(); s != Closed {
			t.Fatalf("after 4 down: State() = %v, want closed", s)
		}
		call(b, Down, 0)
		if s := b.State(); s != Open {
			t.Fatalf("after 5 down: State() = %v, want open", s)
		}
		if got, want := b.OpenUntil(), t0.Add(5*time.Second); !got.Equal(want) {
			t.Errorf("OpenUntil() = %v, want %v", got, want)
		}
	})
	t.Run("a half-busy backend keeps its traffic", func(t *testing.T) {
		b, _, _ := newTest(t, Settings{})
		for i := range 1000 {
			c := OK
			if i%2 == 0 || i%7 == 0 {
				c = Busy // 57% busy, with runs of busy answers
			}
			if err := call(b, c, 0); err != nil {
				t.Fatalf("call %d: %v; want a backend that answers most calls to stay closed", i, err)
			}
		}
	})
	t.Run("a backend busy on practically every call trips", func(t *testing.T) {
		b, clk, _ := newTest(t, Settings{})
		for range 49 {
			call(b, Busy, 0)
		}
		clk.Advance(time.Second)
		if s := b.State(); s != Closed {
			t.Fatalf("after 49 busy: State() = %v, want closed (min_requests 50)", s)
		}
		call(b, Busy, 0)
		if s := b.State(); s != Open {
			t.Fatalf("after 50 busy over a second: State() = %v, want open", s)
		}
	})
	t.Run("busy answers that come back before any answer do not trip", func(t *testing.T) {
		// Busy answers return at once and answers take a call's time: a
		// half-busy backend's first 100 outcomes within its first
		// milliseconds can all be busy.
		b, clk, _ := newTest(t, Settings{})
		for range 100 {
			clk.Advance(time.Millisecond)
			call(b, Busy, 0)
		}
		if s := b.State(); s != Closed {
			t.Fatalf("after 100 busy in 100 ms: State() = %v, want closed", s)
		}
	})
}

func TestBreakerOpenUntil(t *testing.T) {
	tests := []struct {
		name string
		// open drives a fresh breaker (policy testPolicy, clock at t0) open.
		open func(b *Breaker, clk *clock)
		// want is OpenUntil, as an offset from t0.
		want time.Duration
	}{
		{
			name: "OpenFor",
			open: func(b *Breaker, _ *clock) {
				for range 3 {
					call(b, Busy, 0)
				}
			},
			want: 5 * time.Second,
		},
		{
			name: "Retry-After on the tripping answer beyond OpenFor",
			open: func(b *Breaker, _ *clock) {
				call(b, Busy, 0)
				call(b, Busy, 0)
				call(b, Busy, 30*time.Second)
			},
			want: 30 * time.Second,
		},
		{
			name: "Retry-After shorter than OpenFor",
			open: func(b *Breaker, _ *clock) {
				call(b, Busy, 0)
				call(b, Busy, 0)
				call(b, Busy, time.Second)
			},
			want: 5 * time.Second,
		},
		{
			name: "Retry-After of an earlier busy answer is forgotten",
			open: func(b *Breaker, clk *clock) {
				call(b, Busy, 20*time.Second)
				clk.Advance(2 * time.Second)
				call(b, Busy, 0)
				call(b, Busy, 0)
			},
			want: 7 * time.Second,
		},
		{
			name: "Retry-After capped at MaxOpen",
			open: func(b *Breaker, _ *clock) {
				call(b, Busy, 0)
				call(b, Busy, 0)
				call(b, Busy, 99999999*time.Second)
			},
			want: DefaultMaxOpen,
		},
		{
			name: "Retry-After from a call admitted before the trip",
			open: func(b *Breaker, clk *clock) {
				done, _ := b.Allow()
				for range 3 {
					call(b, Busy, 0)
				}
				clk.Advance(time.Second)
				done(Busy, time.Minute)
			},
			want: time.Minute + time.Second,
		},
		{
			name: "Retry-After of a non-busy answer ignored",
			open: func(b *Breaker, _ *clock) {
				call(b, Client, time.Minute)
				call(b, Failed, time.Minute)
				call(b, Failed, 0)
				call(b, Failed, 0)
			},
			want: 5 * time.Second,
		},
		{
			name: "a failed probe reopens for OpenFor",
			open: func(b *Breaker, clk *clock) {
				for range 3 {
					call(b, Busy, 0)
				}
				clk.Advance(5 * time.Second)
				call(b, Down, 40*time.Second)
			},
			want: 10 * time.Second,
		},
		{
			name: "Retry-After forgotten once closed",
			open: func(b *Breaker, clk *clock) {
				early, _ := b.Allow()
				for range 3 {
					call(b, Busy, 0)
				}
				clk.Advance(5 * time.Second)
				call(b, OK, 0)
				early(Busy, time.Minute) // stale, while half-open
				call(b, OK, 0)           // closed again
				for range 3 {
					call(b, Busy, 0)
				}
			},
			want: 10 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk, _ := newTest(t, testPolicy)
			tt.open(b, clk)
			want := t0.Add(tt.want)
			if got := b.OpenUntil(); !got.Equal(want) {
				t.Fatalf("OpenUntil() = %v, want %v", got.Sub(t0), tt.want)
			}
			clk.Advance(want.Sub(clk.Now()) - time.Nanosecond)
			if s := b.State(); s != Open {
				t.Errorf("just before OpenUntil: State() = %v, want open", s)
			}
			if err := call(b, OK, 0); !errors.Is(err, ErrOpen) {
				t.Errorf("just before OpenUntil: Allow() = %v, want ErrOpen", err)
			}
			clk.Advance(time.Nanosecond)
			if s := b.State(); s != HalfOpen {
				t.Errorf("at OpenUntil: State() = %v, want half-open", s)
			}
			if got := b.OpenUntil(); !got.IsZero() {
				t.Errorf("at OpenUntil: OpenUntil() = %v, want zero", got)
			}
			if err := call(b, OK, 0); err != nil {
				t.Errorf("at OpenUntil: Allow() = %v, want a probe admitted", err)
			}
		})
	}
}

func TestBreakerHalfOpen(t *testing.T) {
	p := testPolicy
	p.HalfOpenProbes = 3
	tests := []struct {
		name string
		// probes are the outcomes of the admitted probes, reported in order
		// after as many probes as the breaker admits were let through.
		probes       []Class
		wantAdmitted int
		wantState    State
		// wantMore says whether one more call is admitted at the end.
		wantMore bool
	}{
		{
			name:         "all probes succeed",
			probes:       []Class{OK, OK, OK},
			wantAdmitted: 3,
			wantState:    Closed,
			wantMore:     true,
		},
		{
			name:         "a busy probe shows the backend is up",
			probes:       []Class{OK, Busy, OK},
			wantAdmitted: 3,
			wantState:    Closed,
			wantMore:     true,
		},
		{
			name:         "a failed probe reopens",
			probes:       []Class{Failed, OK, OK},
			wantAdmitted: 3,
			wantState:    Open,
		},
		{
			name:         "an unreachable probe reopens",
			probes:       []Class{OK, Down, OK},
			wantAdmitted: 3,
			wantState:    Open,
		},
		{
			name:         "an excluded probe frees its slot",
			probes:       []Class{Client, OK, OK},
			wantAdmitted: 3,
			wantState:    HalfOpen,
			wantMore:     true,
		},
		{
			name:         "a canceled probe frees its slot",
			probes:       []Class{OK, Canceled, OK},
			wantAdmitted: 3,
			wantState:    HalfOpen,
			wantMore:     true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, clk, _ := newTest(t, p)
			for range 3 {
				call(b, Busy, 0)
			}
			clk.Advance(5 * time.Second)
			var dones []func(Class, time.Duration)
			for range 10 {
				done, err := b.Allow()
				if err != nil {
					if !errors.Is(err, ErrOpen) {
						t.Fatalf("Allow() = %v, want ErrOpen", err)
					}
					break
				}
				dones = append(dones, done)
			}
			if got := len(dones); got != tt.wantAdmitted {
				t.Fatalf("admitted %d probes, want %d", got, tt.wantAdmitted)
			}
			if s := b.State(); s != HalfOpen {
				t.Errorf("probes in flight: State() = %v, want half-open", s)
			}
			if u := b.OpenUntil(); !u.IsZero() {
				t.Errorf("probes in flight: OpenUntil() = %v, want zero", u)
			}
			for i, c := range tt.probes {
				dones[i](c, 0)
			}
			if diff := cmp.Diff(tt.wantState, b.State()); diff != "" {
				t.Errorf("State() (-want +got):\n%s", diff)
			}
			if tt.wantState == Open {
				if got, want := b.OpenUntil(), clk.Now().Add(5*time.Second); !got.Equal(want) {
					t.Errorf("reopened: OpenUntil() = %v, want %v", got, want)
				}
			}
			_, err := b.Allow()
			if got := err == nil; got != tt.wantMore {
				t.Errorf("one more Allow() = %v, want admitted: %v", err, tt.wantMore)
			}
		})
	}
}

func TestBreakerOnChange(t *testing.T) {
	b, clk, rec := newTest(t, testPolicy)
	for range 3 {
		call(b, Busy, 0) // trips at t0
	}
	clk.Advance(5 * time.Second)
	call(b, Down, 0) // probe at t0+5s reopens
	clk.Advance(5 * time.Second)
	call(b, OK, 0) // probe at t0+10s
	clk.Advance(time.Second)
	call(b, OK, 0) // second probe at t0+11s closes

	want := []Change{
		{Backend: "b1", From: Closed, To: Open, At: t0, OpenUntil: t0.Add(5 * time.Second), Reason: "consecutive busy"},
		{Backend: "b1", From: Open, To: HalfOpen, At: t0.Add(5 * time.Second)},
		{Backend: "b1", From: HalfOpen, To: Open, At: t0.Add(5 * time.Second), OpenUntil: t0.Add(10 * time.Second), Reason: "probe failed"},
		{Backend: "b1", From: Open, To: HalfOpen, At: t0.Add(10 * time.Second)},
		{Backend: "b1", From: HalfOpen, To: Closed, At: t0.Add(11 * time.Second)},
	}
	if diff := cmp.Diff(want, rec.get()); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

func TestBreakerDoneOnce(t *testing.T) {
	b, _, rec := newTest(t, testPolicy)
	call(b, Busy, 0)
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		done(Busy, 0) // only the first counts: two busy in a row, not six
	}
	if s := b.State(); s != Closed {
		t.Errorf("State() = %v, want closed; changes %v", s, rec.transitions())
	}
}

func TestBreakerDropsResultsFromBeforeATransition(t *testing.T) {
	b, clk, rec := newTest(t, testPolicy)
	// Both in flight while the breaker trips.
	whileOpen, _ := b.Allow()
	afterClose, _ := b.Allow()
	for range 3 {
		call(b, Busy, 0)
	}
	whileOpen(OK, 0) // must not count as a probe success
	clk.Advance(5 * time.Second)
	call(b, OK, 0)
	if s := b.State(); s != HalfOpen {
		t.Fatalf("after 1 of 2 probes: State() = %v, want half-open", s)
	}
	call(b, OK, 0)
	call(b, Busy, 0)
	call(b, Busy, 0)
	afterClose(Busy, 0) // must not make a third busy in a row
	if diff := cmp.Diff([]string{"closed->open", "open->half-open", "half-open->closed"}, rec.transitions()); diff != "" {
		t.Errorf("transitions (-want +got):\n%s", diff)
	}
}

func TestBreakerConcurrent(t *testing.T) {
	p := testPolicy
	p.MinRequests = 50
	b, clk, rec := newTest(t, p)
	classes := []Class{OK, OK, OK, Busy, Failed, Client, Canceled}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				if done, err := b.Allow(); err == nil {
					done(classes[(g+i)%len(classes)], time.Duration(i%3)*time.Second)
				}
				switch i % 100 {
				case 0:
					clk.Advance(time.Second)
				case 1:
					_ = b.State()
				case 2:
					_ = b.OpenUntil()
				}
			}
		})
	}
	wg.Wait()
	// Transitions must chain: each starts where the previous one ended.
	from := Closed
	for i, c := range rec.get() {
		if c.From != from || c.From == c.To {
			t.Fatalf("change %d: %v -> %v after a change to %v", i, c.From, c.To, from)
		}
		from = c.To
	}
}

func TestStateString(t *testing.T) {
	tests := []struct {
		s    State
		want string
	}{
		{Closed, "closed"},
		{HalfOpen, "half-open"},
		{Open, "open"},
		{State(7), "unknown"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("State(%d).String() = %q, want %q", int(tt.s), got, tt.want)
		}
	}
}

func TestSet(t *testing.T) {
	clk := newClock()
	var s Set // the zero Set is usable
	s.opts = []Option{WithClock(clk.Now), WithOnChange(nil)}

	a := s.Get("a", testPolicy)
	if got := s.Get("a", testPolicy); got != a {
		t.Error("Get with the same policy returned a new breaker")
	}
	for range 3 {
		call(a, Busy, 0)
	}
	if got := s.Get("a", testPolicy); got != a || got.State() != Open {
		t.Errorf("after a reload: same breaker %v, state %v; want the same, open", got == a, got.State())
	}

	zero := s.Get("z", Settings{})
	explicit := s.Get("z", Settings{}.withDefaults())
	if zero != explicit {
		t.Error("a policy spelling out the defaults replaced the breaker")
	}

	changed := testPolicy
	changed.OpenFor = time.Minute
	a2 := s.Get("a", changed)
	if a2 == a || a2.State() != Closed {
		t.Errorf("policy changed: same breaker %v, state %v; want a new, closed one", a2 == a, a2.State())
	}

	s.Retain([]string{"z", "gone"})
	if got := s.Get("z", Settings{}); got != zero {
		t.Error("Retain dropped a retained breaker")
	}
	if got := s.Get("a", changed); got == a2 {
		t.Error("Retain kept a dropped breaker")
	}
	if got := NewSet().Get("x", testPolicy).Name(); got != "x" {
		t.Errorf("Name() = %q, want x", got)
	}
}

func TestSetConcurrent(t *testing.T) {
	s := NewSet(WithOnChange(nil))
	var wg sync.WaitGroup
	got := make([]*Breaker, 8)
	for i := range got {
		wg.Go(func() {
			for j := range 100 {
				got[i] = s.Get("a", testPolicy)
				s.Get(fmt.Sprint("x", j), testPolicy)
				if j%10 == 0 {
					s.Retain([]string{"a"})
				}
			}
		})
	}
	wg.Wait()
	for i, b := range got {
		if b != got[0] {
			t.Errorf("goroutine %d got another breaker for a", i)
		}
	}
}

func TestStateMatchesGobreaker(t *testing.T) {
	got := []State{State(gobreaker.StateClosed), State(gobreaker.StateHalfOpen), State(gobreaker.StateOpen)}
	if diff := cmp.Diff([]State{Closed, HalfOpen, Open}, got); diff != "" {
		t.Errorf("states (-want +got):\n%s", diff)
	}
}

// TestBreakerOnExtend: a Retry-After that arrives while the breaker is open
// (from a call admitted before the trip) and pushes OpenUntil later is
// reported once, with the new OpenUntil; one that does not extend it is not,
// and neither is a transition.
func TestBreakerOnExtend(t *testing.T) {
	clk := newClock()
	type ext struct {
		backend string
		until   time.Time
	}
	var got []ext
	b := New("b1", testPolicy, WithClock(clk.Now), WithOnChange(nil),
		WithOnExtend(func(backend string, until time.Time) { got = append(got, ext{backend, until}) }))
	var late []func(Class, time.Duration)
	for range 2 {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		late = append(late, done)
	}
	for range 3 {
		call(b, Busy, 0) // trips at t0: open until t0+5s
	}
	if len(got) != 0 {
		t.Fatalf("a trip was reported as an extension: %v", got)
	}
	late[0](Busy, 2*time.Second) // until t0+2s: not later than t0+5s
	if len(got) != 0 {
		t.Fatalf("a Retry-After inside the open period was reported: %v", got)
	}
	late[1](Busy, 30*time.Second)
	if want := []ext{{"b1", t0.Add(30 * time.Second)}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("extensions = %v, want %v", got, want)
	}
	if u := b.OpenUntil(); !u.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("OpenUntil = %v, want t0+30s", u)
	}
}

// TestBreakerReset: Reset closes an open breaker at once, forgets its run of
// failures, reports the change, and ignores answers to calls admitted before
// it.
func TestBreakerReset(t *testing.T) {
	b, _, rec := newTest(t, testPolicy)
	stale, _ := b.Allow()
	for range 3 {
		call(b, Down, 0)
	}
	if s := b.State(); s != Open {
		t.Fatalf("State() = %v, want open", s)
	}
	if !b.Reset() {
		t.Error("Reset() = false on an open breaker, want true")
	}
	if s, u := b.State(), b.OpenUntil(); s != Closed || !u.IsZero() {
		t.Fatalf("after Reset: State() = %v, OpenUntil() = %v; want closed, zero", s, u)
	}
	call(b, Down, 0)
	call(b, Down, 0)
	stale(Down, 0) // from before the reset: not a third failure
	if s := b.State(); s != Closed {
		t.Errorf("after 2 failures and a stale one: State() = %v, want closed", s)
	}
	if b.Reset() {
		t.Error("Reset() = true on a closed breaker, want false")
	}
	want := []string{"closed->open", "open->closed"}
	if diff := cmp.Diff(want, rec.transitions()); diff != "" {
		t.Errorf("transitions (-want +got):\n%s", diff)
	}
	if got := rec.get()[1].Reason; got != "reset" {
		t.Errorf("reset change Reason = %q, want reset", got)
	}
}
