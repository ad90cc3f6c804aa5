package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
)

// model is a fake backend that streams a fixed answer word by word and
// continues it from a prefix, as a model that follows the continue
// instruction (or DeepSeek's prefix completion) perfectly. It can break a
// stream, hold its first token back, and records what it was asked.
type model struct {
	name   string
	answer []string // the deltas: "w0", " w1", ...

	mu         sync.Mutex
	breakAfter int           // cut each stream after this many tokens (0: never)
	cleanBreak bool          // cut with io.EOF and no finish reason, not an error
	reasoning  bool          // stream the answer as reasoning deltas
	toolCall   bool          // stream the answer as the arguments of a tool call
	hold       chan struct{} // nil, or the first token waits for it (or ctx)
	started    chan struct{} // closed at the first Stream
	reqs       []*detourv1.CompleteRequest
}

func newModel(name string, words int) *model {
	m := &model{name: name, started: make(chan struct{})}
	for i := range words {
		w := fmt.Sprintf("w%d", i)
		if i > 0 {
			w = " " + w
		}
		m.answer = append(m.answer, w)
	}
	return m
}

func (m *model) text() string { return strings.Join(m.answer, "") }

func (m *model) requests() []*detourv1.CompleteRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*detourv1.CompleteRequest(nil), m.reqs...)
}

func (m *model) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return &detourv1.CompleteResponse{Content: m.text(), FinishReason: "stop"}, nil
}

func (m *model) Close() error { return nil }

func (m *model) Stream(ctx context.Context, req *detourv1.CompleteRequest) (ChunkStream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reqs = append(m.reqs, req)
	select {
	case <-m.started:
	default:
		close(m.started)
	}
	// Continue after the prefix: the last assistant turn (a prefix, or one
	// followed by the continue prompt).
	msgs := req.GetMessages()
	prefix := ""
	switch last := msgs[len(msgs)-1]; {
	case last.GetPrefix():
		prefix = last.GetContent()
	case len(msgs) >= 2 && msgs[len(msgs)-2].GetRole() == "assistant":
		prefix = msgs[len(msgs)-2].GetContent()
	}
	start := 0
	for got := ""; got != prefix; start++ {
		if start == len(m.answer) || !strings.HasPrefix(prefix, got+m.answer[start]) {
			return nil, fmt.Errorf("%s: %q is not a prefix of the answer", m.name, prefix)
		}
		got += m.answer[start]
	}
	return &modelStream{ctx: ctx, m: m, rest: m.answer[start:], prompt: 10 + start,
		breakAfter: m.breakAfter, clean: m.cleanBreak, hold: m.hold, reasoning: m.reasoning, tool: m.toolCall}, nil
}

type modelStream struct {
	ctx        context.Context
	m          *model
	rest       []string
	prompt     int
	sent       int
	done       bool
	role       bool
	breakAfter int
	clean      bool
	hold       chan struct{}
	reasoning  bool
	tool       bool
}

func (s *modelStream) Recv() (*detourv1.CompleteChunk, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	if !s.role { // the role chunk: no token
		s.role = true
		return &detourv1.CompleteChunk{Id: "id-" + s.m.name, Model: "m"}, nil
	}
	if s.sent == 0 && s.hold != nil {
		select {
		case <-s.hold:
		case <-s.ctx.Done():
			return nil, s.ctx.Err()
		}
	}
	if s.breakAfter > 0 && s.sent == s.breakAfter {
		if s.clean {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("backend %s: %w: cut", s.m.name, provider.ErrIncomplete)
	}
	if s.done {
		return nil, io.EOF
	}
	if s.sent == len(s.rest) {
		s.done = true
		return &detourv1.CompleteChunk{Id: "id-" + s.m.name, Model: "m", FinishReason: "stop",
			Usage: &detourv1.Usage{PromptTokens: int32(s.prompt), CompletionTokens: int32(len(s.rest)), TotalTokens: int32(s.prompt + len(s.rest))}}, nil
	}
	ch := &detourv1.CompleteChunk{Id: "id-" + s.m.name, Model: "m"}
	switch {
	case s.reasoning:
		ch.ReasoningDelta = s.rest[s.sent]
	case s.tool:
		ch.ToolCallDeltas = []*detourv1.ToolCallDelta{{Index: 0, Function: &detourv1.FunctionCall{Arguments: s.rest[s.sent]}}}
	default:
		ch.Delta = s.rest[s.sent]
	}
	s.sent++
	return ch, nil
}

func (s *modelStream) Close() error { return nil }

// streamRouter builds a router over models home-1 (region home), near-1
// (near) and far-1 (far), no fallback, with metrics.
func streamRouter(t *testing.T, models map[string]*model, change func(*regions.Config)) (*Router, *metrics.Metrics) {
	t.Helper()
	cfg := testConfig()
	cfg.Fallbacks = nil
	if change != nil {
		change(cfg)
	}
	m := metrics.New()
	r, err := New(&regions.Snapshot{Config: cfg}, Options{Region: "home", Logger: quiet, Metrics: m,
		NewProvider: func(b regions.Backend) (Provider, error) {
			if p := models[b.Name]; p != nil {
				return p, nil
			}
			return newModel(b.Name, 3), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, m
}

// collect runs a stream and returns its chunks.
func collect(r *Router, ctx context.Context, rq *detourv1.CompleteRequest) ([]*detourv1.CompleteChunk, error) {
	var got []*detourv1.CompleteChunk
	err := r.Stream(ctx, rq, func(ch *detourv1.CompleteChunk) error {
		got = append(got, ch)
		return nil
	})
	return got, err
}

func joined(chunks []*detourv1.CompleteChunk) string {
	var b strings.Builder
	for _, ch := range chunks {
		b.WriteString(ch.GetDelta())
	}
	return b.String()
}

// TestTruncatedStreamIsAFailure: an upstream stream that ends without a
// finish reason is a failure, never a complete answer, and never cached:
// before its first token the call moves on; after it, the call ends
// UNAVAILABLE (continuation off).
func TestTruncatedStreamIsAFailure(t *testing.T) {
	for _, clean := range []bool{true, false} {
		t.Run(fmt.Sprintf("clean close %v", clean), func(t *testing.T) {
			home := newModel("home-1", 6)
			home.breakAfter, home.cleanBreak = 3, clean
			near, far := newModel("near-1", 6), newModel("far-1", 6)
			near.breakAfter, near.cleanBreak, far.breakAfter, far.cleanBreak = 3, clean, 3, clean
			models := map[string]*model{"home-1": home, "near-1": near, "far-1": far}
			r, _ := streamRouter(t, models, nil)
			rq := req()
			rq.Temperature = new(float64) // cacheable
			got, err := collect(r, context.Background(), rq)
			var re *Error
			if !errors.As(err, &re) || re.Code != Unavailable || !strings.Contains(re.Message, "broke after it started") {
				t.Fatalf("err = %v, want UNAVAILABLE: broke after it started", err)
			}
			if joined(got) != "w0 w1 w2" {
				t.Errorf("caller got %q before the break, want the 3 tokens sent", joined(got))
			}
			if st := backendState(r, "home-1"); st.Capacity.BusyShare == 0 {
				t.Error("a truncated stream counted as an answer")
			}
			// Not cached: the next identical call goes upstream again.
			upstream := func() (n int) {
				for _, m := range models {
					n += len(m.requests())
				}
				return n
			}
			before := upstream()
			collect(r, context.Background(), rq)
			if upstream() == before {
				t.Error("a truncated stream was served from the cache")
			}
		})
	}
}

// TestFirstTokenTimeout: a stream attempt that sends no token within its
// first-token bound (a role chunk is not a token) counts as busy and the
// call moves on; the caller's hint can only shorten the backend's bound.
func TestFirstTokenTimeout(t *testing.T) {
	tests := []struct {
		name    string
		backend time.Duration // home-1's first_token_timeout
		policy  time.Duration // streams.first_token_timeout
		hint    time.Duration
	}{
		{name: "backend", backend: 20 * time.Millisecond},
		{name: "streams section", policy: 20 * time.Millisecond},
		{name: "caller shortens", backend: time.Hour, hint: 20 * time.Millisecond},
		{name: "caller alone", hint: 20 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			home := newModel("home-1", 3)
			home.hold = make(chan struct{}) // never released
			r, _ := streamRouter(t, map[string]*model{"home-1": home}, func(c *regions.Config) {
				c.Regions[0].Backends[0].FirstTokenTimeout = regions.Duration(tt.backend)
				c.Streams.FirstTokenTimeout = regions.Duration(tt.policy)
			})
			rq := req()
			if tt.hint > 0 {
				rq.Routing = &detourv1.RoutingHints{FirstTokenTimeout: durationpb.New(tt.hint)}
			}
			got, err := collect(r, context.Background(), rq)
			if err != nil {
				t.Fatal(err)
			}
			if b := got[0].GetServedBy().GetBackend(); b != "near-1" {
				t.Errorf("served by %s, want near-1 after home-1's first-token timeout", b)
			}
			if st := backendState(r, "home-1"); st.Capacity.BusyShare == 0 {
				t.Error("the attempt past its first-token bound did not count as busy")
			}
		})
	}
	t.Run("a longer hint does not extend the backend's bound", func(t *testing.T) {
		home := newModel("home-1", 3)
		home.hold = make(chan struct{})
		r, _ := streamRouter(t, map[string]*model{"home-1": home}, func(c *regions.Config) {
			c.Regions[0].Backends[0].FirstTokenTimeout = regions.Duration(20 * time.Millisecond)
		})
		rq := req()
		rq.Routing = &detourv1.RoutingHints{FirstTokenTimeout: durationpb.New(time.Hour)}
		got, err := collect(r, context.Background(), rq)
		if err != nil || got[0].GetServedBy().GetBackend() != "near-1" {
			t.Fatalf("%v, %v: want near-1 after home-1's own 20ms bound", got, err)
		}
	})
	t.Run("reasoning is a token", func(t *testing.T) {
		home := newModel("home-1", 3)
		home.reasoning = true
		r, _ := streamRouter(t, map[string]*model{"home-1": home}, func(c *regions.Config) {
			c.Streams.FirstTokenTimeout = regions.Duration(time.Hour)
		})
		got, err := collect(r, context.Background(), req())
		if err != nil || got[0].GetServedBy().GetBackend() != "home-1" || got[1].GetReasoningDelta() == "" {
			t.Fatalf("%v, %v: want home-1's reasoning (after its role chunk)", got, err)
		}
	})
}

// TestHedgedStreamStart: when the first attempt sends no token within the
// hedge delay, a second starts on the next candidate; the first to send a
// token holds the stream and the other is cancelled, which does not count
// against its backend.
func TestHedgedStreamStart(t *testing.T) {
	t.Run("the hedge wins", func(t *testing.T) {
		home := newModel("home-1", 3)
		home.hold = make(chan struct{}) // never released: the hedge must win
		near := newModel("near-1", 3)
		r, m := streamRouter(t, map[string]*model{"home-1": home, "near-1": near}, func(c *regions.Config) {
			c.Streams.HedgeAfter = regions.Duration(10 * time.Millisecond)
		})
		got, err := collect(r, context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		if b := got[0].GetServedBy().GetBackend(); b != "near-1" || joined(got) != near.text() {
			t.Errorf("served by %s: %q; want near-1's answer", b, joined(got))
		}
		st := backendState(r, "home-1")
		if st.Breaker != breaker.Closed || st.Capacity.BusyShare != 0 {
			t.Errorf("home-1 after losing the hedge: breaker %v, busy share %v; want closed and 0", st.Breaker, st.Capacity.BusyShare)
		}
		if got := counter(t, m, "detour_stream_hedges_total", "result", "won"); got != 1 {
			t.Errorf("hedges won = %v, want 1", got)
		}
	})
	t.Run("the first wins after the hedge started", func(t *testing.T) {
		home := newModel("home-1", 3)
		home.hold = make(chan struct{})
		near := newModel("near-1", 3)
		near.hold = make(chan struct{}) // never released
		r, m := streamRouter(t, map[string]*model{"home-1": home, "near-1": near}, func(c *regions.Config) {
			c.Streams.HedgeAfter = regions.Duration(10 * time.Millisecond)
		})
		go func() {
			<-near.started // the hedge began: now home-1 sends its token
			close(home.hold)
		}()
		got, err := collect(r, context.Background(), req())
		if err != nil {
			t.Fatal(err)
		}
		if b := got[0].GetServedBy().GetBackend(); b != "home-1" || joined(got) != home.text() {
			t.Errorf("served by %s: %q; want home-1's answer", b, joined(got))
		}
		if got := counter(t, m, "detour_stream_hedges_total", "result", "started"); got != 1 {
			t.Errorf("hedges started = %v, want 1", got)
		}
		if st := backendState(r, "near-1"); st.Capacity.BusyShare != 0 {
			t.Errorf("near-1's cancelled hedge counted: busy share %v", st.Capacity.BusyShare)
		}
	})
	t.Run("a caller can refuse it", func(t *testing.T) {
		home := newModel("home-1", 3)
		near := newModel("near-1", 3)
		home.hold = make(chan struct{})
		r, _ := streamRouter(t, map[string]*model{"home-1": home, "near-1": near}, func(c *regions.Config) {
			c.Streams.HedgeAfter = regions.Duration(time.Millisecond)
		})
		rq := req()
		rq.Routing = &detourv1.RoutingHints{NoHedge: true}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { _, err := collect(r, ctx, rq); done <- err }()
		<-home.started
		// Without a hedge nothing else starts; release home-1 and see it
		// answer alone.
		close(home.hold)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		cancel()
		if n := len(near.requests()); n != 0 {
			t.Errorf("near-1 got %d requests with no_hedge", n)
		}
	})
}

// TestContinuation: a stream that breaks after it started is continued on
// another backend, with the text so far as a prefix (prefix_completion) or
// an assistant turn and the continue prompt; the caller sees one answer,
// the chunks after the splice say so, and the usage adds the parts.
func TestContinuation(t *testing.T) {
	for _, prefix := range []bool{true, false} {
		t.Run(fmt.Sprintf("prefix completion %v", prefix), func(t *testing.T) {
			home := newModel("home-1", 8)
			home.breakAfter = 3
			near := newModel("near-1", 8)
			r, m := streamRouter(t, map[string]*model{"home-1": home, "near-1": near}, func(c *regions.Config) {
				c.Streams.Continuation = true
				c.Regions[1].Backends[0].PrefixCompletion = prefix
			})
			got, err := collect(r, context.Background(), req())
			if err != nil {
				t.Fatal(err)
			}
			if joined(got) != home.text() {
				t.Errorf("caller got %q, want the whole answer %q", joined(got), home.text())
			}
			var continued int
			for _, ch := range got {
				if ch.GetContinued() {
					continued++
					if ch.GetServedBy().GetBackend() != "near-1" || ch.GetId() != "id-home-1" {
						t.Errorf("a continued chunk from %s with id %s, want near-1 with the first part's id", ch.GetServedBy().GetBackend(), ch.GetId())
					}
				}
			}
			if continued != 6 { // 5 tokens and the last chunk
				t.Errorf("%d chunks marked continued, want 6", continued)
			}
			u := got[len(got)-1].GetUsage()
			if u.GetCompletionTokens() != 8 || u.GetPromptTokens() != 10+13 {
				t.Errorf("usage %v: want 8 completion tokens (3 + 5) and 23 prompt tokens (10, then 10 + the 3-token prefix)", u)
			}
			rqs := near.requests()
			if len(rqs) != 1 {
				t.Fatalf("near-1 got %d requests, want 1", len(rqs))
			}
			msgs := rqs[0].GetMessages()
			last := msgs[len(msgs)-1]
			switch {
			case prefix && (!last.GetPrefix() || last.GetContent() != "w0 w1 w2"):
				t.Errorf("continuation's last message %v, want the prefix \"w0 w1 w2\"", last)
			case !prefix && (last.GetRole() != "user" || last.GetContent() != regions.DefaultContinuePrompt || msgs[len(msgs)-2].GetContent() != "w0 w1 w2"):
				t.Errorf("continuation ends %v, %v; want the text so far and the continue prompt", msgs[len(msgs)-2], last)
			}
			if a, s := counter(t, m, "detour_stream_continuations_total", "result", "attempted"), counter(t, m, "detour_stream_continuations_total", "result", "succeeded"); a != 1 || s != 1 {
				t.Errorf("continuations attempted %v, succeeded %v; want 1, 1", a, s)
			}
		})
	}

	t.Run("not when the caller refuses, nor for tool calls, reasoning or JSON", func(t *testing.T) {
		tests := []struct {
			name   string
			change func(m *model, rq *detourv1.CompleteRequest)
		}{
			{"caller refuses", func(_ *model, rq *detourv1.CompleteRequest) {
				rq.Routing = &detourv1.RoutingHints{Continuation: detourv1.Continuation_CONTINUATION_OFF}
			}},
			{"tool call", func(m *model, _ *detourv1.CompleteRequest) { m.toolCall = true }},
			{"think phase", func(m *model, _ *detourv1.CompleteRequest) { m.reasoning = true }},
			{"JSON mode", func(_ *model, rq *detourv1.CompleteRequest) {
				rq.ResponseFormat = &detourv1.ResponseFormat{Type: "json_object"}
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				home := newModel("home-1", 8)
				home.breakAfter = 3
				near := newModel("near-1", 8)
				r, _ := streamRouter(t, map[string]*model{"home-1": home, "near-1": near}, func(c *regions.Config) {
					c.Streams.Continuation = true
				})
				rq := req()
				tt.change(home, rq)
				_, err := collect(r, context.Background(), rq)
				var re *Error
				if !errors.As(err, &re) || re.Code != Unavailable || !strings.Contains(re.Message, "broke after it started") {
					t.Errorf("err = %v, want UNAVAILABLE: broke after it started", err)
				}
				if n := len(near.requests()); n != 0 {
					t.Errorf("near-1 got %d requests: the stream was continued", n)
				}
			})
		}
	})

	t.Run("no attempt can follow the break", func(t *testing.T) {
		// retry.max_attempts 1: the error says no continuation went out,
		// not that continuing failed.
		home := newModel("home-1", 12)
		home.breakAfter = 2
		r, _ := streamRouter(t, map[string]*model{"home-1": home}, func(c *regions.Config) {
			c.Regions = c.Regions[:1]
			c.Streams.Continuation = true
			c.Retry.MaxAttempts = 1
		})
		_, err := collect(r, context.Background(), req())
		var re *Error
		if !errors.As(err, &re) || re.Code != Unavailable || !strings.Contains(re.Message, "no backend could take its continuation") {
			t.Fatalf("err = %v, want UNAVAILABLE: no backend could take its continuation", err)
		}
	})

	t.Run("a sole backend that keeps breaking", func(t *testing.T) {
		home := newModel("home-1", 12)
		home.breakAfter = 2
		r, _ := streamRouter(t, map[string]*model{"home-1": home}, func(c *regions.Config) {
			c.Regions = c.Regions[:1]
			c.Streams.Continuation = true
			c.Streams.MaxContinuations = 5
			c.Retry.MaxAttempts = 3
		})
		got, err := collect(r, context.Background(), req())
		var re *Error
		if !errors.As(err, &re) || re.Code != Unavailable || !strings.Contains(re.Message, "continuing it failed (3 attempts") {
			t.Fatalf("err = %v, want UNAVAILABLE after 3 attempts", err)
		}
		if joined(got) != "w0 w1 w2 w3 w4 w5" {
			t.Errorf("caller got %q, want 3 parts of 2 tokens", joined(got))
		}
	})

	t.Run("a caller can ask for it", func(t *testing.T) {
		home := newModel("home-1", 8)
		home.breakAfter = 3
		r, _ := streamRouter(t, map[string]*model{"home-1": home, "near-1": newModel("near-1", 8)}, nil)
		rq := req()
		rq.Routing = &detourv1.RoutingHints{Continuation: detourv1.Continuation_CONTINUATION_ON}
		got, err := collect(r, context.Background(), rq)
		if err != nil || joined(got) != home.text() {
			t.Fatalf("%q, %v: want the whole answer", joined(got), err)
		}
	})

	t.Run("splices are bounded, and a continued answer is not cached", func(t *testing.T) {
		models := map[string]*model{}
		for _, n := range []string{"home-1", "near-1", "far-1"} {
			models[n] = newModel(n, 12)
			models[n].breakAfter = 2 // every part breaks after 2 tokens
		}
		r, _ := streamRouter(t, models, func(c *regions.Config) {
			c.Streams.Continuation = true
			c.Streams.MaxContinuations = 1
			c.Retry.MaxAttempts = 5
		})
		rq := req()
		rq.Temperature = new(float64)
		got, err := collect(r, context.Background(), rq)
		var re *Error
		if !errors.As(err, &re) || re.Code != Unavailable || !strings.Contains(re.Message, "broke after it started") {
			t.Fatalf("err = %v, want the stream to end after one continuation", err)
		}
		if joined(got) != "w0 w1 w2 w3" {
			t.Errorf("caller got %q, want 2 tokens and 2 more from one continuation", joined(got))
		}
		if n := len(models["far-1"].requests()); n != 0 {
			t.Errorf("far-1 got %d requests: more than one continuation", n)
		}

		// A continued answer that completes is served but not stored. A
		// fresh router: the breaks above counted as busy answers against
		// every backend, which moves the next call's order.
		models = map[string]*model{}
		for _, n := range []string{"home-1", "near-1", "far-1"} {
			models[n] = newModel(n, 12)
		}
		models["home-1"].breakAfter = 2
		r, _ = streamRouter(t, models, func(c *regions.Config) {
			c.Streams.Continuation = true
			c.Streams.MaxContinuations = 1
			c.Retry.MaxAttempts = 5
		})
		rq2 := req()
		rq2.Messages[0].Content = "another"
		rq2.Temperature = new(float64)
		if got, err := collect(r, context.Background(), rq2); err != nil || !got[len(got)-1].GetContinued() {
			t.Fatalf("%v: want a continued answer", err)
		}
		n := len(models["home-1"].requests()) + len(models["near-1"].requests()) + len(models["far-1"].requests())
		collect(r, context.Background(), rq2)
		if m := len(models["home-1"].requests()) + len(models["near-1"].requests()) + len(models["far-1"].requests()); m == n {
			t.Error("a continued answer was served from the cache")
		}
	})
}

// counter reads one series of a counter from m's exposition.
func counter(t *testing.T, m *metrics.Metrics, name, label, value string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	want := fmt.Sprintf("%s{%s=%q} ", name, label, value)
	for line := range strings.SplitSeq(rec.Body.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, want); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// TestContinuationTextIsBounded: the text a stream keeps for a continuation
// is kept only when the stream may be continued, and no more than
// maxContinuationPrefix of it (an upstream that streams without end held
// the whole answer in memory once: hostile upstreams, endless stream).
func TestContinuationTextIsBounded(t *testing.T) {
	piece := strings.Repeat("x", 1024)
	relayAll := func(sc *streamCall, n int) {
		for range n {
			if err := sc.deliver(&detourv1.CompleteChunk{Delta: piece}, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	send := func(*detourv1.CompleteChunk) error { return nil }

	off := &streamCall{send: send, maxSplices: 2}
	relayAll(off, 10)
	if off.content.Len() != 0 || off.tokens != 10 {
		t.Errorf("continuation off: kept %d bytes of text (want 0), counted %d tokens (want 10)", off.content.Len(), off.tokens)
	}

	on := &streamCall{send: send, maxSplices: 2, continueOn: true}
	relayAll(on, 10)
	if on.content.Len() != 10*len(piece) || !on.canContinue() {
		t.Errorf("continuation on, 10 KiB relayed: kept %d bytes, may continue %v; want %d, true", on.content.Len(), on.canContinue(), 10*len(piece))
	}
	relayAll(on, maxContinuationPrefix/len(piece))
	if on.content.Len() != 0 || on.content.Cap() != 0 || on.canContinue() {
		t.Errorf("continuation on, past %d bytes: kept %d bytes (cap %d), may continue %v; want nothing kept and no continuation",
			maxContinuationPrefix, on.content.Len(), on.content.Cap(), on.canContinue())
	}
	relayAll(on, 10)
	if on.content.Len() != 0 {
		t.Errorf("continuation on, after giving up: kept %d bytes again", on.content.Len())
	}
}

// TestBrokenStreamsDoNotOpenTheBreaker: a backend whose streams break after
// their first token is up and answering: its breaker counts the breaks as
// busy answers (a share, not a run of failures), so six breaks in a row
// leave it closed where five failures open it; its adaptive limit learns
// nothing from them. With every upstream breaking 30% of its streams, runs
// of breaks opened healthy backends' breakers and left continuations
// nowhere to go (bench streams: 90.75% completed).
func TestBrokenStreamsDoNotOpenTheBreaker(t *testing.T) {
	for _, clean := range []bool{true, false} {
		t.Run(fmt.Sprintf("clean close %v", clean), func(t *testing.T) {
			home := newModel("home-1", 6)
			home.breakAfter, home.cleanBreak = 2, clean
			models := map[string]*model{"home-1": home}
			r, m := streamRouter(t, models, func(c *regions.Config) { c.Regions = c.Regions[:1] }) // home-1 alone
			for i := range 6 {
				rq := req()
				rq.Messages[0].Content = fmt.Sprintf("call %d", i)
				if _, err := collect(r, context.Background(), rq); err == nil {
					t.Fatalf("call %d: a stream that broke after 2 tokens succeeded", i)
				}
			}
			st := backendState(r, "home-1")
			if n := len(models["home-1"].requests()); n != 6 {
				t.Fatalf("home-1 got %d of the 6 calls, want all (it is the first choice)", n)
			}
			if st.Breaker != breaker.Closed {
				t.Errorf("home-1's breaker is %v after 6 broken streams, want closed", st.Breaker)
			}
			if st.Capacity.Held != 0 {
				t.Errorf("home-1's limit holds %d slots after broken streams, as for busy answers: %+v", st.Capacity.Held, st.Capacity)
			}
			if got := counter(t, m, "detour_stream_truncations_total", "backend", "home-1"); got != 6 {
				t.Errorf("detour_stream_truncations_total{backend=home-1} = %v, want 6", got)
			}
		})
	}
}
