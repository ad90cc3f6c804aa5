package router

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/metrics"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// streamCall is one streamed call across its attempts: the caller's send,
// what reached the caller so far, and whether and how a broken stream may
// be continued on another backend. Only the attempt that holds the stream
// (the only one, or a hedge's winner) writes to it, one at a time.
type streamCall struct {
	t       *table
	metrics *metrics.Metrics
	req     *detourv1.CompleteRequest
	send    func(*detourv1.CompleteChunk) error

	firstToken time.Duration // the caller's first_token_timeout (0: none)
	hedgeAfter time.Duration // 0: no hedged start
	continueOn bool          // a broken stream may be continued
	maxSplices int

	// What reached the caller.
	id, model string
	content   strings.Builder // the text so far, kept only while it may be continued
	overlong  bool            // the text outgrew maxContinuationPrefix: not continued
	tokens    int             // chunks with output relayed: the completion tokens, one a chunk
	toolCalls bool            // a tool-call piece was relayed
	reasoning bool            // a reasoning piece was relayed
	started   bool            // anything reached the caller

	// Continuations.
	splices  int   // continuation attempts made
	prefixes []int // per earlier part: the tokens relayed before it started
}

// newStreamCall reads the call's hints and the streams policy.
func newStreamCall(t *table, m *metrics.Metrics, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) *streamCall {
	hints := req.GetRouting()
	sc := &streamCall{t: t, metrics: m, req: req, send: send, maxSplices: t.streams.MaxContinuationsOrDefault()}
	sc.firstToken = hints.GetFirstTokenTimeout().AsDuration()
	switch {
	case hints.GetNoHedge():
	case hints.GetHedgeAfter().AsDuration() > 0:
		sc.hedgeAfter = hints.GetHedgeAfter().AsDuration()
	default:
		sc.hedgeAfter = t.streams.HedgeAfter.D()
	}
	switch hints.GetContinuation() {
	case detourv1.Continuation_CONTINUATION_ON:
		sc.continueOn = true
	case detourv1.Continuation_CONTINUATION_OFF:
	default:
		sc.continueOn = t.streams.Continuation
	}
	return sc
}

// firstTokenFor is the first-token bound of an attempt on b: the backend's
// (else the streams section's), shortened by the caller's; 0 for none.
func (sc *streamCall) firstTokenFor(b *backend) time.Duration {
	d := b.cfg.FirstTokenTimeout.D()
	if d == 0 {
		d = sc.t.streams.FirstTokenTimeout.D()
	}
	if h := sc.firstToken; h > 0 && (d == 0 || h < d) {
		d = h
	}
	return d
}

// jsonMode reports whether the answer must be JSON.
func (sc *streamCall) jsonMode() bool {
	switch sc.req.GetResponseFormat().GetType() {
	case "json_object", "json_schema":
		return true
	}
	return false
}

// canContinue reports whether a stream that broke now may be continued on
// another backend: continuation is on, the splices are not used up, and
// what reached the caller is at a safe boundary: content only (a tool call
// in pieces, a think phase or a JSON document cannot be resumed faithfully
// by another backend).
func (sc *streamCall) canContinue() bool {
	return sc.continueOn && sc.splices < sc.maxSplices && sc.content.Len() > 0 &&
		!sc.overlong && !sc.toolCalls && !sc.reasoning && !sc.jsonMode()
}

// request is what an attempt on b sends: the caller's request, or, once
// content reached the caller, a continuation of it. A backend with
// prefix_completion gets the text so far as an assistant prefix (DeepSeek's
// prefix completion); another gets it as an assistant turn followed by
// streams.continue_prompt. max_tokens shrinks by the tokens already sent.
func (sc *streamCall) request(b *backend) *detourv1.CompleteRequest {
	if sc.content.Len() == 0 {
		return sc.req
	}
	cont := proto.CloneOf(sc.req) // rare: a stream broke
	msgs := make([]*detourv1.Message, 0, len(sc.req.GetMessages())+2)
	msgs = append(msgs, sc.req.GetMessages()...)
	if b.cfg.PrefixCompletion {
		msgs = append(msgs, &detourv1.Message{Role: "assistant", Content: sc.content.String(), Prefix: true})
	} else {
		msgs = append(msgs,
			&detourv1.Message{Role: "assistant", Content: sc.content.String()},
			&detourv1.Message{Role: "user", Content: sc.t.streams.ContinuePromptOrDefault()})
	}
	cont.Messages = msgs
	if n := cont.GetMaxTokens(); n > 0 {
		cont.MaxTokens = max(1, n-int32(sc.tokens))
	}
	if n := cont.GetMaxCompletionTokens(); n > 0 {
		cont.MaxCompletionTokens = max(1, n-int32(sc.tokens))
	}
	return cont
}

// begin notes the start of an attempt: one made after content reached the
// caller is a continuation. It reports whether it is one.
func (sc *streamCall) begin() bool {
	if sc.content.Len() == 0 {
		return false
	}
	sc.splices++
	sc.prefixes = append(sc.prefixes, sc.tokens)
	return true
}

// deliver passes ch, from an attempt that holds the stream, to the caller:
// a continuation's chunks say so and keep the first part's id and model,
// and its usage adds the parts before it.
func (sc *streamCall) deliver(ch *detourv1.CompleteChunk, continued bool) error {
	if !sc.started {
		sc.id, sc.model = ch.GetId(), ch.GetModel()
	}
	if continued {
		ch.Continued = true
		ch.Id, ch.Model = sc.id, sc.model
		if u := ch.GetUsage(); u != nil {
			sc.addEarlierParts(u)
		}
	}
	sc.started = true
	if output(ch) {
		sc.tokens++
	}
	sc.keep(ch.GetDelta())
	sc.toolCalls = sc.toolCalls || len(ch.GetToolCallDeltas()) > 0
	sc.reasoning = sc.reasoning || ch.GetReasoningDelta() != ""
	return sc.send(ch)
}

// maxContinuationPrefix bounds the text a stream keeps to continue it on
// another backend: a longer answer is not continued (it fails as without
// continuation), and an endless one holds no more than this.
const maxContinuationPrefix = 256 << 10

// keep adds text that reached the caller to what a continuation would
// carry. Nothing is kept unless the stream may be continued, and never more
// than maxContinuationPrefix: the text is relayed, not stored.
func (sc *streamCall) keep(text string) {
	if !sc.continueOn || sc.overlong || text == "" {
		return
	}
	if sc.content.Len()+len(text) > maxContinuationPrefix {
		sc.overlong = true
		sc.content = strings.Builder{}
		return
	}
	sc.content.WriteString(text)
}

// addEarlierParts adds to a continuation's usage what the broken parts
// before it cost, which no upstream reported (a stream reports usage in its
// last chunk): their completion tokens are the chunks relayed (one token a
// chunk, as DeepSeek and OpenAI stream), their prompt tokens the original
// prompt's (this part's prompt without the prefix it carries) plus their
// own prefix. Estimates, documented as such.
func (sc *streamCall) addEarlierParts(u *detourv1.Usage) {
	last := sc.prefixes[len(sc.prefixes)-1]
	orig := max(0, int(u.GetPromptTokens())-last)
	prompt := 0
	for i := range sc.prefixes { // one broken part before each continuation
		prompt += orig
		if i > 0 {
			prompt += sc.prefixes[i-1]
		}
	}
	u.PromptTokens += int32(prompt)
	u.CompletionTokens += int32(last)
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
}

// output reports whether ch carries a token: content, reasoning or a piece
// of a tool call (an empty chunk, the role alone or a keep-alive does not).
func output(ch *detourv1.CompleteChunk) bool {
	return ch.GetDelta() != "" || ch.GetReasoningDelta() != "" || len(ch.GetToolCallDeltas()) > 0
}

// hedgeGate decides which of a hedged stream's attempts holds the stream:
// the first to have a token to send. The others are cancelled at once.
type hedgeGate struct {
	mu      sync.Mutex
	winner  *attempt
	cancels map[*attempt]context.CancelFunc
}

// add registers an attempt and the cancel of its context.
func (g *hedgeGate) add(a *attempt, cancel context.CancelFunc) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancels == nil {
		g.cancels = map[*attempt]context.CancelFunc{}
	}
	g.cancels[a] = cancel
	a.gate = g
}

// win reports whether a holds the stream, taking it if nobody does; the
// first to take it cancels the others.
func (g *hedgeGate) win(a *attempt) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.winner == nil {
		g.winner = a
		for other, cancel := range g.cancels {
			if other != a {
				cancel()
			}
		}
	}
	return g.winner == a
}

// won returns the attempt holding the stream, or nil.
func (g *hedgeGate) won() *attempt {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.winner
}
