package provider

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/excerpt"
)

var (
	// ErrMalformed is wrapped by every error about an answer that arrived
	// with a 2xx status but could not be used: not JSON, no choices, too
	// large, a broken stream event. Such errors are *HTTPError values with the
	// 2xx status, which breaker.Classify sorts as Failed.
	ErrMalformed = errors.New("malformed answer")
	// ErrIncomplete is wrapped when a stream ends before its "data: [DONE]"
	// event (a detour backend's: before its end), or ends without having
	// given a finish reason: the answer is unfinished. breaker.Classify
	// sorts it as Failed.
	ErrIncomplete = errors.New("incomplete stream")
)

// maxMessageBytes bounds what an error quotes of an upstream's words
// (HTTPError.Message, an RPCError's status message), before the clip mark.
const maxMessageBytes = excerpt.Max

// maxRetryAfter clamps a Retry-After hint so that a hostile value cannot
// overflow a time.Duration.
const maxRetryAfter = 24 * time.Hour

// HTTPError is an OpenAI-compatible backend's answer that cannot be used: a
// non-2xx status, or a 2xx status with an unusable body (then Err is
// ErrMalformed). It implements breaker.StatusCoder and breaker.RetryAfterer.
// Message never contains the backend's API key. An HTTPError is not modified
// after it is returned and may be shared between goroutines.
type HTTPError struct {
	// Backend names the backend that answered.
	Backend string
	// Status is the HTTP status code.
	Status int
	// Message is the upstream's error message (error.message, message,
	// detail, or the body's text) made into one line, with anything that
	// looks like a credential replaced, and clipped to a few hundred bytes
	// (marked "…[clipped N bytes]"); for a 2xx status it says what was wrong
	// with the answer. Empty when the body said nothing useful.
	Message string
	// RetryAfterD is the upstream's Retry-After (or retry-after-ms) hint; zero
	// when absent, unparsable or in the past.
	RetryAfterD time.Duration
	// Err is the cause, if any: ErrMalformed for an unusable 2xx answer, nil
	// for an error status.
	Err error
}

// Error reads like "backend eu-1: HTTP 503: Server busy (retry after 2s)".
func (e *HTTPError) Error() string {
	var b strings.Builder
	b.WriteString("backend ")
	b.WriteString(e.Backend)
	b.WriteString(": HTTP ")
	b.WriteString(strconv.Itoa(e.Status))
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	switch {
	case e.Message != "":
		b.WriteString(": ")
		b.WriteString(e.Message)
	case e.Err == nil && http.StatusText(e.Status) != "":
		b.WriteString(" ")
		b.WriteString(http.StatusText(e.Status))
	}
	if e.RetryAfterD > 0 {
		b.WriteString(" (retry after ")
		b.WriteString(e.RetryAfterD.String())
		b.WriteString(")")
	}
	return b.String()
}

// StatusCode returns the HTTP status (breaker.StatusCoder).
func (e *HTTPError) StatusCode() int { return e.Status }

// RetryAfter returns the upstream's Retry-After hint, or 0
// (breaker.RetryAfterer).
func (e *HTTPError) RetryAfter() time.Duration { return e.RetryAfterD }

// Unwrap returns Err.
func (e *HTTPError) Unwrap() error { return e.Err }

// RPCError is a gRPC error from a detour backend. It wraps the status error,
// so status.FromError and status.Code still see the upstream code, and it
// implements breaker.RetryAfterer with the status's errdetails.RetryInfo.
// An RPCError is not modified after it is returned and may be shared between
// goroutines.
type RPCError struct {
	// Backend names the backend that answered.
	Backend string
	// Err is the upstream gRPC status error; its message never contains the
	// backend's API key.
	Err error
	// RetryAfterD is the RetryInfo delay carried by the status; zero when
	// absent.
	RetryAfterD time.Duration
}

// Error reads like "backend us-1: rpc error: code = Unavailable desc = busy".
func (e *RPCError) Error() string { return "backend " + e.Backend + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *RPCError) Unwrap() error { return e.Err }

// RetryAfter returns the upstream's RetryInfo delay, or 0
// (breaker.RetryAfterer).
func (e *RPCError) RetryAfter() time.Duration { return e.RetryAfterD }

// retryInfo returns the delay of the first RetryInfo detail of s, or 0.
func retryInfo(s *status.Status) time.Duration {
	if len(s.Proto().GetDetails()) == 0 {
		return 0
	}
	for _, d := range s.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return clampRetryAfter(ri.GetRetryDelay().AsDuration())
		}
	}
	return 0
}

// retryAfter reads the hint of an HTTP answer: OpenAI's retry-after-ms
// first, then Retry-After as delta-seconds or an HTTP-date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms > 0 && !math.IsInf(ms, 0) {
			return clampRetryAfter(time.Duration(math.Min(ms, float64(maxRetryAfter/time.Millisecond)) * float64(time.Millisecond)))
		}
	}
	return parseRetryAfter(h.Get("Retry-After"), now)
}

// parseRetryAfter parses a Retry-After value: delta-seconds (a fraction is
// tolerated) or an HTTP-date relative to now. Anything unparsable, negative
// or in the past is 0.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if !(secs > 0) || math.IsInf(secs, 0) {
			return 0
		}
		return clampRetryAfter(time.Duration(math.Min(secs, maxRetryAfter.Seconds()) * float64(time.Second)))
	}
	if t, err := http.ParseTime(v); err == nil {
		// The date has whole seconds: round up rather than retry early.
		d := t.Sub(now)
		if r := d % time.Second; r > 0 {
			d += time.Second - r
		}
		return clampRetryAfter(d)
	}
	return 0
}

func clampRetryAfter(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return 0
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	return d
}

// upstreamMessage finds the human message in an error body: OpenAI's
// {"error":{"message":...}}, {"error":"..."}, vLLM's {"message":...},
// FastAPI's {"detail":"..."}, or else the body's text.
func upstreamMessage(body []byte) string {
	var eb struct {
		Error   json.RawMessage `json:"error"`
		Message json.RawMessage `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	if json.Unmarshal(body, &eb) != nil {
		return string(body)
	}
	if len(eb.Error) > 0 {
		var obj struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		}
		if json.Unmarshal(eb.Error, &obj) == nil {
			if obj.Message != "" {
				return obj.Message
			}
			if obj.Type != "" {
				return obj.Type
			}
		}
		if s := jsonString(eb.Error); s != "" {
			return s
		}
	}
	if s := jsonString(eb.Message); s != "" {
		return s
	}
	if s := jsonString(eb.Detail); s != "" {
		return s
	}
	return string(body)
}

func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// cleanMessage makes upstream text fit for one line of an error: the key
// removed first (so that clipping cannot leave part of it), then
// excerpt.Line: control characters, invalid UTF-8 and runs of space made
// one space, whatever else looks like a credential replaced, clipped to
// maxMessageBytes and marked.
func cleanMessage(s string, cred *credential) string {
	return excerpt.Line(cred.scrub(s), maxMessageBytes)
}
