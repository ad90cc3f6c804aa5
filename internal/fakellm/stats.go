package fakellm

import "sync/atomic"

// Stats counts the chat completion requests a Server received, over HTTP
// and gRPC together, by outcome. Other endpoints (/v1/models, /control,
// /stats) are not counted.
//
// Every request counts once in Total when it arrives and once in one
// outcome when its fate is known, so Total is the sum of the outcomes plus
// the requests still waiting for theirs.
type Stats struct {
	// Total counts every request received.
	Total uint64 `json:"total"`
	// OK counts complete answers.
	OK uint64 `json:"ok"`
	// Busy counts "server busy" answers (HTTP 503, gRPC UNAVAILABLE).
	Busy uint64 `json:"busy"`
	// RateLimited counts requests over the QPS limit (HTTP 429, gRPC
	// RESOURCE_EXHAUSTED).
	RateLimited uint64 `json:"rate_limited"`
	// Hang counts requests accepted and never answered.
	Hang uint64 `json:"hang"`
	// BadRequest counts invalid requests (HTTP 400, gRPC INVALID_ARGUMENT).
	BadRequest uint64 `json:"bad_request"`
	// Garbage counts answers with malformed JSON (gRPC INTERNAL).
	Garbage uint64 `json:"garbage"`
	// Cut counts answers cut half-way.
	Cut uint64 `json:"cut"`
	// Broken counts streams broken after some of their chunks
	// (Settings.BreakRate), clean and dropped alike.
	Broken uint64 `json:"broken"`
	// Exhausted counts "Insufficient Balance" answers (HTTP 402, gRPC
	// RESOURCE_EXHAUSTED).
	Exhausted uint64 `json:"exhausted"`
	// Canceled counts requests whose client went away, or that the Server
	// dropped on Close, before the answer was complete.
	Canceled uint64 `json:"canceled"`
	// InFlight is the number of requests being handled now, hanging ones
	// included. Reset leaves it alone.
	InFlight int64 `json:"in_flight"`
}

// outcome is the fate of one request.
type outcome int

const (
	outcomeOK outcome = iota
	outcomeBusy
	outcomeRateLimited
	outcomeHang
	outcomeBadRequest
	outcomeGarbage
	outcomeCut
	outcomeCanceled
	outcomeExhausted
	outcomeBroken
	numOutcomes
)

// paddedCounter keeps each hot counter on its own cache line, so that
// concurrent requests with different outcomes do not contend.
type paddedCounter struct {
	n atomic.Int64
	_ [56]byte
}

// counters is the live form of Stats. Safe for concurrent use; lock-free.
type counters struct {
	total    paddedCounter
	inFlight paddedCounter
	outcomes [numOutcomes]paddedCounter
	prompt   paddedCounter
	tokens   paddedCounter
}

// started counts the prompt of an answer that started.
func (c *counters) started(a *answer) { c.prompt.n.Add(int64(a.prompt)) }

// sent counts n completion tokens sent.
func (c *counters) sent(n int) { c.tokens.n.Add(int64(n)) }

// begin counts a request that arrived; end must follow.
func (c *counters) begin() {
	c.total.n.Add(1)
	c.inFlight.n.Add(1)
}

// end marks the request as no longer in flight.
func (c *counters) end() { c.inFlight.n.Add(-1) }

// count records the outcome of one request.
func (c *counters) count(o outcome) { c.outcomes[o].n.Add(1) }

func (c *counters) snapshot() Stats {
	n := func(o outcome) uint64 { return uint64(c.outcomes[o].n.Load()) }
	return Stats{
		Total:       uint64(c.total.n.Load()),
		OK:          n(outcomeOK),
		Busy:        n(outcomeBusy),
		RateLimited: n(outcomeRateLimited),
		Hang:        n(outcomeHang),
		BadRequest:  n(outcomeBadRequest),
		Garbage:     n(outcomeGarbage),
		Cut:         n(outcomeCut),
		Canceled:    n(outcomeCanceled),
		Exhausted:   n(outcomeExhausted),
		Broken:      n(outcomeBroken),
		InFlight:    c.inFlight.n.Load(),
	}
}

// Usage is the tokens a Server spent, as a provider bills them, since New
// or the last ResetStats.
type Usage struct {
	// PromptTokens adds up the prompt tokens of every answer that started
	// (after Latency), finished or not.
	PromptTokens uint64 `json:"prompt_tokens"`
	// CompletionTokens adds up the completion tokens sent: one per streamed
	// chunk with a token (content, reasoning or a piece of a tool call),
	// the whole completion of a unary answer sent whole.
	CompletionTokens uint64 `json:"completion_tokens"`
}

func (c *counters) usage() Usage {
	return Usage{PromptTokens: uint64(c.prompt.n.Load()), CompletionTokens: uint64(c.tokens.n.Load())}
}

// reset zeroes the counts, one by one: requests in flight meanwhile may be
// counted on either side.
func (c *counters) reset() {
	c.total.n.Store(0)
	c.prompt.n.Store(0)
	c.tokens.n.Store(0)
	for i := range c.outcomes {
		c.outcomes[i].n.Store(0)
	}
}

// ConnStats counts the connections of the HTTP listener after Start, to see
// how a client multiplexes its calls. Requests served by ServeHTTP on
// another server's listener are not counted here.
type ConnStats struct {
	// Opened counts the HTTP connections accepted.
	Opened uint64 `json:"opened"`
	// Open is the number of HTTP connections open now. Reset leaves it
	// alone.
	Open int64 `json:"open"`
	// HTTP2Requests counts the chat requests that came over HTTP/2.
	HTTP2Requests uint64 `json:"http2_requests"`
	// MaxInFlightPerConn is the most chat requests that were in flight at
	// once on one connection: 1 over HTTP/1.1, up to the streams allowed
	// over HTTP/2.
	MaxInFlightPerConn int64 `json:"max_in_flight_per_conn"`
}
