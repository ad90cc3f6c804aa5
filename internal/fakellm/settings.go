package fakellm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Settings are the knobs of a Server that can change while it serves. The
// zero value answers every request at once, successfully, with no limit.
//
// A Settings value is a plain value; a Server keeps an immutable copy and
// swaps it atomically (see Server.SetSettings), so a change applies to HTTP
// and gRPC requests alike, from the next request on.
//
// Settings marshals to and from the JSON of the /control endpoint:
//
//	{"latency":"20ms","jitter":"5ms","busy_rate":0.5,"qps":1000,"burst":0,
//	 "capacity":0,"max_concurrency":0,"hang_rate":0,"tokens_per_sec":0,
//	 "garbage_rate":0,"cut_rate":0,"think_tokens":0,"think_interval":"0s",
//	 "json_blank_rate":0,"queue_delay":"0s","keep_alive_interval":"0s",
//	 "exhausted_rate":0,"ttft":"0s","ttft_sigma":0,"ttft_tail_rate":0,
//	 "ttft_tail":"0s","break_rate":0,"break_clean":0,
//	 "prefix_completion":false,"answer_tokens":0}
//
// Durations are Go duration strings. Unmarshalling changes only the fields
// present in the document and refuses unknown fields; it does not validate.
type Settings struct {
	// Latency is the mean delay before an answer starts (time to first
	// byte). Zero answers at once.
	Latency time.Duration
	// Jitter spreads the delay uniformly over [Latency-Jitter,
	// Latency+Jitter], floored at zero. Zero means no spread.
	Jitter time.Duration
	// BusyRate is the fraction of admitted requests, in [0, 1], answered
	// "server busy": HTTP 503 with a DeepSeek-style body, gRPC UNAVAILABLE.
	// Zero: never.
	BusyRate float64
	// QPS caps the requests admitted per second, HTTP and gRPC together.
	// Requests above it get HTTP 429 with "Retry-After: 1", or gRPC
	// RESOURCE_EXHAUSTED with a RetryInfo of one second. Zero: no limit.
	QPS float64
	// Burst is how many requests may be admitted at once on top of the
	// steady QPS rate. Zero means a tenth of a second's worth of QPS, at
	// least 1. Ignored when QPS is zero.
	Burst int
	// Capacity is the requests per second the backend can serve; above it
	// requests are answered "server busy" (HTTP 503, gRPC UNAVAILABLE), as an
	// overloaded provider does, rather than 429 as for QPS. It has a tenth
	// of a second's worth of burst. Zero: no limit.
	Capacity float64
	// MaxConcurrency is the requests the backend works on at once; a request
	// that arrives while that many are in flight is answered "server busy"
	// at once (HTTP 503, gRPC UNAVAILABLE), as a model server with a full
	// batch does. Zero: no limit.
	MaxConcurrency int
	// HangRate is the fraction of admitted requests that are accepted and
	// never answered, until the client goes away or the Server closes.
	// Zero: never.
	HangRate float64
	// TokensPerSec paces streamed answers, which carry one token per chunk.
	// Zero sends chunks as fast as possible. Unary answers are not paced.
	TokensPerSec float64
	// GarbageRate is the fraction of admitted requests answered with
	// malformed JSON and status 200 (a malformed chunk in a stream). On
	// gRPC the call ends with INTERNAL, as a client that cannot decode a
	// message reports it. Zero: never.
	GarbageRate float64
	// CutRate is the fraction of admitted requests whose connection is cut
	// half-way through the answer: an HTTP body or stream ends abruptly,
	// without [DONE]; a gRPC call ends with UNAVAILABLE (a stream after half
	// of its chunks). Zero: never.
	CutRate float64
	// ThinkTokens is the length, in tokens, of the think phase of a request
	// that thinks (model deepseek-reasoner, or thinking enabled): reasoning
	// streamed as reasoning_content deltas before the answer, and counted in
	// usage as reasoning tokens. Zero means 8.
	ThinkTokens int
	// ThinkInterval is the pause between two streamed reasoning chunks.
	// Zero paces them like the answer (TokensPerSec). Unary answers are not
	// paced.
	ThinkInterval time.Duration
	// JSONBlankRate is the fraction of JSON-mode answers (response_format
	// json_object or json_schema) whose content is blank, with finish reason
	// "stop", as DeepSeek documents it may happen. Zero: never.
	JSONBlankRate float64
	// QueueDelay keeps every admitted request waiting this long before its
	// latency starts, as a provider's queue does: over HTTP the answer's
	// headers go out at once and keep-alives follow every
	// KeepAliveInterval (an empty line before a unary answer, an SSE
	// ": keep-alive" comment in a stream); over gRPC the call just waits.
	// Zero: no queue.
	QueueDelay time.Duration
	// KeepAliveInterval is the pause between two keep-alives while a
	// request is queued. Zero means 1s.
	KeepAliveInterval time.Duration
	// ExhaustedRate is the fraction of admitted requests answered HTTP 402
	// "Insufficient Balance" (gRPC RESOURCE_EXHAUSTED with that message), as
	// an account out of credit is. Zero: never.
	ExhaustedRate float64
	// TTFT is the median wait for the first token, after Latency (and
	// QueueDelay): a streamed answer has started (over HTTP its headers and
	// its role chunk are out) but sends no token yet. Unary answers wait it
	// too. Zero: none.
	TTFT time.Duration
	// TTFTSigma spreads the wait log-normally around TTFT: it is
	// TTFT*e^(TTFTSigma*N(0,1)), so 0.5 puts the 99th percentile at 3.2
	// times the median. Zero: exactly TTFT.
	TTFTSigma float64
	// TTFTTailRate is the fraction of answers, in [0, 1], whose first token
	// waits longer still: a heavy tail on top of the wait above, as a
	// provider's queue sometimes holds a call. Zero: never.
	TTFTTailRate float64
	// TTFTTail is the scale of that tail: the extra wait is Pareto
	// distributed from TTFTTail with shape 1.5 (a tenth of the tail waits
	// exceed 4.6 times TTFTTail, a hundredth 21 times), capped at 100 times.
	TTFTTail time.Duration
	// BreakRate is the fraction of streamed answers, in [0, 1], that break
	// after a random number of chunks: uniform over 1..n-1 of the n chunks
	// of the answer (its content, or its tool call), so that some output
	// went out and the last chunk, with the finish reason and usage, never
	// does. Answers of fewer than 2 chunks and unary answers do not break
	// (see CutRate). Zero: never.
	BreakRate float64
	// BreakClean is the fraction of broken streams, in [0, 1], that end
	// cleanly: the HTTP body ends without a finish reason or [DONE], the
	// gRPC call ends OK without its last chunk. The others are dropped: the
	// HTTP connection is cut, the gRPC call ends UNAVAILABLE.
	BreakClean float64
	// PrefixCompletion continues an answer from an assistant prefix, as
	// DeepSeek's prefix completion does: when the last message is an
	// assistant one with "prefix": true, the answer is the text the
	// conversation without it gets, minus the prefix, so that prefix and
	// answer put together are the answer of an unbroken stream. A prefix the
	// text does not start with gets the whole text, as a model goes its own
	// way. False: the prefix flag is ignored and the message is an ordinary
	// assistant turn.
	PrefixCompletion bool
	// AnswerTokens pads a text answer to this many tokens with filler words
	// drawn from its ref, after the echo: the same messages get the same
	// words. Tool calls are not padded; max_tokens still truncates. Zero:
	// the echo alone.
	AnswerTokens int
}

// maxAnswerTokens bounds Settings.AnswerTokens.
const maxAnswerTokens = 100000

// maxTTFTSigma bounds Settings.TTFTSigma: e^(4*4) is already a factor of
// nine million at four standard deviations.
const maxTTFTSigma = 4

// Validate reports every out-of-range field of s, joined into one error.
func (s Settings) Validate() error {
	var errs []error
	if s.Latency < 0 {
		errs = append(errs, fmt.Errorf("latency %v is negative", s.Latency))
	}
	if s.Jitter < 0 {
		errs = append(errs, fmt.Errorf("jitter %v is negative", s.Jitter))
	}
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"busy rate", s.BusyRate},
		{"hang rate", s.HangRate},
		{"garbage rate", s.GarbageRate},
		{"cut rate", s.CutRate},
		{"json blank rate", s.JSONBlankRate},
		{"exhausted rate", s.ExhaustedRate},
		{"ttft tail rate", s.TTFTTailRate},
		{"break rate", s.BreakRate},
		{"break clean", s.BreakClean},
	} {
		if !(r.v >= 0 && r.v <= 1) { // also refuses NaN
			errs = append(errs, fmt.Errorf("%s %v is outside [0, 1]", r.name, r.v))
		}
	}
	if !(s.QPS >= 0) || math.IsInf(s.QPS, 0) {
		errs = append(errs, fmt.Errorf("qps %v is not a finite number >= 0", s.QPS))
	}
	if s.Burst < 0 {
		errs = append(errs, fmt.Errorf("burst %d is negative", s.Burst))
	}
	if !(s.Capacity >= 0) || math.IsInf(s.Capacity, 0) {
		errs = append(errs, fmt.Errorf("capacity %v is not a finite number >= 0", s.Capacity))
	}
	if s.MaxConcurrency < 0 {
		errs = append(errs, fmt.Errorf("max concurrency %d is negative", s.MaxConcurrency))
	}
	if !(s.TokensPerSec >= 0) || math.IsInf(s.TokensPerSec, 0) {
		errs = append(errs, fmt.Errorf("tokens per second %v is not a finite number >= 0", s.TokensPerSec))
	}
	if s.ThinkTokens < 0 || s.ThinkTokens > maxThinkTokens {
		errs = append(errs, fmt.Errorf("think tokens %d is outside [0, %d]", s.ThinkTokens, maxThinkTokens))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"think interval", s.ThinkInterval}, {"queue delay", s.QueueDelay}, {"keep-alive interval", s.KeepAliveInterval},
		{"ttft median", s.TTFT}, {"ttft tail scale", s.TTFTTail}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if !(s.TTFTSigma >= 0 && s.TTFTSigma <= maxTTFTSigma) {
		errs = append(errs, fmt.Errorf("ttft sigma %v is outside [0, %d]", s.TTFTSigma, maxTTFTSigma))
	}
	if s.AnswerTokens < 0 || s.AnswerTokens > maxAnswerTokens {
		errs = append(errs, fmt.Errorf("answer tokens %d is outside [0, %d]", s.AnswerTokens, maxAnswerTokens))
	}
	return errors.Join(errs...)
}

// settingsJSON is the wire form of Settings.
type settingsJSON struct {
	Latency           string  `json:"latency"`
	Jitter            string  `json:"jitter"`
	BusyRate          float64 `json:"busy_rate"`
	QPS               float64 `json:"qps"`
	Burst             int     `json:"burst"`
	Capacity          float64 `json:"capacity"`
	MaxConcurrency    int     `json:"max_concurrency"`
	HangRate          float64 `json:"hang_rate"`
	TokensPerSec      float64 `json:"tokens_per_sec"`
	GarbageRate       float64 `json:"garbage_rate"`
	CutRate           float64 `json:"cut_rate"`
	ThinkTokens       int     `json:"think_tokens"`
	ThinkInterval     string  `json:"think_interval"`
	JSONBlankRate     float64 `json:"json_blank_rate"`
	QueueDelay        string  `json:"queue_delay"`
	KeepAliveInterval string  `json:"keep_alive_interval"`
	ExhaustedRate     float64 `json:"exhausted_rate"`
	TTFT              string  `json:"ttft"`
	TTFTSigma         float64 `json:"ttft_sigma"`
	TTFTTailRate      float64 `json:"ttft_tail_rate"`
	TTFTTail          string  `json:"ttft_tail"`
	BreakRate         float64 `json:"break_rate"`
	BreakClean        float64 `json:"break_clean"`
	PrefixCompletion  bool    `json:"prefix_completion"`
	AnswerTokens      int     `json:"answer_tokens"`
}

// settingsPatch is a /control document: nil fields were absent.
type settingsPatch struct {
	Latency           *string  `json:"latency"`
	Jitter            *string  `json:"jitter"`
	BusyRate          *float64 `json:"busy_rate"`
	QPS               *float64 `json:"qps"`
	Burst             *int     `json:"burst"`
	Capacity          *float64 `json:"capacity"`
	MaxConcurrency    *int     `json:"max_concurrency"`
	HangRate          *float64 `json:"hang_rate"`
	TokensPerSec      *float64 `json:"tokens_per_sec"`
	GarbageRate       *float64 `json:"garbage_rate"`
	CutRate           *float64 `json:"cut_rate"`
	ThinkTokens       *int     `json:"think_tokens"`
	ThinkInterval     *string  `json:"think_interval"`
	JSONBlankRate     *float64 `json:"json_blank_rate"`
	QueueDelay        *string  `json:"queue_delay"`
	KeepAliveInterval *string  `json:"keep_alive_interval"`
	ExhaustedRate     *float64 `json:"exhausted_rate"`
	TTFT              *string  `json:"ttft"`
	TTFTSigma         *float64 `json:"ttft_sigma"`
	TTFTTailRate      *float64 `json:"ttft_tail_rate"`
	TTFTTail          *string  `json:"ttft_tail"`
	BreakRate         *float64 `json:"break_rate"`
	BreakClean        *float64 `json:"break_clean"`
	PrefixCompletion  *bool    `json:"prefix_completion"`
	AnswerTokens      *int     `json:"answer_tokens"`
}

// MarshalJSON encodes s as in the /control endpoint.
func (s Settings) MarshalJSON() ([]byte, error) {
	return json.Marshal(settingsJSON{
		Latency:           s.Latency.String(),
		Jitter:            s.Jitter.String(),
		BusyRate:          s.BusyRate,
		QPS:               s.QPS,
		Burst:             s.Burst,
		Capacity:          s.Capacity,
		MaxConcurrency:    s.MaxConcurrency,
		HangRate:          s.HangRate,
		TokensPerSec:      s.TokensPerSec,
		GarbageRate:       s.GarbageRate,
		CutRate:           s.CutRate,
		ThinkTokens:       s.ThinkTokens,
		ThinkInterval:     s.ThinkInterval.String(),
		JSONBlankRate:     s.JSONBlankRate,
		QueueDelay:        s.QueueDelay.String(),
		KeepAliveInterval: s.KeepAliveInterval.String(),
		ExhaustedRate:     s.ExhaustedRate,
		TTFT:              s.TTFT.String(),
		TTFTSigma:         s.TTFTSigma,
		TTFTTailRate:      s.TTFTTailRate,
		TTFTTail:          s.TTFTTail.String(),
		BreakRate:         s.BreakRate,
		BreakClean:        s.BreakClean,
		PrefixCompletion:  s.PrefixCompletion,
		AnswerTokens:      s.AnswerTokens,
	})
}

// UnmarshalJSON changes the fields of s present in data. It refuses unknown
// fields and durations that are not Go duration strings, and leaves s
// unchanged on error. It does not validate ranges: see Validate.
func (s *Settings) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p settingsPatch
	if err := dec.Decode(&p); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the settings object")
	}
	next := *s
	for _, d := range []struct {
		name string
		in   *string
		out  *time.Duration
	}{
		{"latency", p.Latency, &next.Latency},
		{"jitter", p.Jitter, &next.Jitter},
		{"think_interval", p.ThinkInterval, &next.ThinkInterval},
		{"queue_delay", p.QueueDelay, &next.QueueDelay},
		{"keep_alive_interval", p.KeepAliveInterval, &next.KeepAliveInterval},
		{"ttft", p.TTFT, &next.TTFT},
		{"ttft_tail", p.TTFTTail, &next.TTFTTail},
	} {
		if d.in == nil {
			continue
		}
		v, err := time.ParseDuration(*d.in)
		if err != nil {
			return fmt.Errorf("%s: want a Go duration such as \"150ms\": %w", d.name, err)
		}
		*d.out = v
	}
	setIf(&next.BusyRate, p.BusyRate)
	setIf(&next.QPS, p.QPS)
	setIf(&next.Burst, p.Burst)
	setIf(&next.Capacity, p.Capacity)
	setIf(&next.MaxConcurrency, p.MaxConcurrency)
	setIf(&next.HangRate, p.HangRate)
	setIf(&next.TokensPerSec, p.TokensPerSec)
	setIf(&next.GarbageRate, p.GarbageRate)
	setIf(&next.CutRate, p.CutRate)
	setIf(&next.ThinkTokens, p.ThinkTokens)
	setIf(&next.JSONBlankRate, p.JSONBlankRate)
	setIf(&next.ExhaustedRate, p.ExhaustedRate)
	setIf(&next.TTFTSigma, p.TTFTSigma)
	setIf(&next.TTFTTailRate, p.TTFTTailRate)
	setIf(&next.BreakRate, p.BreakRate)
	setIf(&next.BreakClean, p.BreakClean)
	setIf(&next.PrefixCompletion, p.PrefixCompletion)
	setIf(&next.AnswerTokens, p.AnswerTokens)
	*s = next
	return nil
}

func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// snapshot is the immutable settings value a Server reads on every request.
type snapshot struct {
	Settings
	lim *limiter // nil when QPS is zero
	cap *limiter // nil when Capacity is zero
}

// newSnapshot builds the snapshot for s, keeping prev's limiter (and so its
// state) when the rate and burst are unchanged.
func newSnapshot(s Settings, prev *snapshot) *snapshot {
	snap := &snapshot{Settings: s}
	if s.QPS > 0 {
		if prev != nil && prev.lim != nil && prev.QPS == s.QPS && prev.Burst == s.Burst {
			snap.lim = prev.lim
		} else {
			snap.lim = newLimiter(s.QPS, s.Burst)
		}
	}
	if s.Capacity > 0 {
		if prev != nil && prev.cap != nil && prev.Capacity == s.Capacity {
			snap.cap = prev.cap
		} else {
			snap.cap = newLimiter(s.Capacity, 0)
		}
	}
	return snap
}
