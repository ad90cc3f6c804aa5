package provider

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/breaker"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		value string
		now   time.Time // zero: now
		want  time.Duration
	}{
		{name: "absent", value: "", want: 0},
		{name: "seconds", value: "2", want: 2 * time.Second},
		{name: "spaces", value: " 7 ", want: 7 * time.Second},
		{name: "fraction", value: "1.5", want: 1500 * time.Millisecond},
		{name: "zero", value: "0", want: 0},
		{name: "negative", value: "-3", want: 0},
		{name: "huge", value: "99999999999999999999", want: maxRetryAfter},
		{name: "not a number", value: "NaN", want: 0},
		{name: "infinite", value: "Inf", want: 0},
		{name: "garbage", value: "soon", want: 0},
		{name: "http date", value: "Sun, 01 Mar 2026 12:00:30 GMT", want: 30 * time.Second},
		{name: "rfc 850 date", value: "Sunday, 01-Mar-26 12:01:00 GMT", want: time.Minute},
		{name: "date rounded up", value: "Sun, 01 Mar 2026 12:00:30 GMT", now: now.Add(300 * time.Millisecond), want: 30 * time.Second},
		{name: "date in the past", value: "Sun, 01 Mar 2026 11:59:00 GMT", want: 0},
		{name: "date far ahead", value: "Fri, 01 Mar 2030 12:00:00 GMT", want: maxRetryAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := now
			if !tt.now.IsZero() {
				at = tt.now
			}
			if got := parseRetryAfter(tt.value, at); got != tt.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.value, got, tt.want)
			}
		})
	}
}

func TestRetryAfterMilliseconds(t *testing.T) {
	h := http.Header{"Retry-After": {"3"}, "Retry-After-Ms": {"250"}}
	if got, want := retryAfter(h, time.Now()), 250*time.Millisecond; got != want {
		t.Errorf("retryAfter = %v, want %v", got, want)
	}
	h = http.Header{"Retry-After": {"3"}, "Retry-After-Ms": {"bad"}}
	if got, want := retryAfter(h, time.Now()), 3*time.Second; got != want {
		t.Errorf("retryAfter with a bad retry-after-ms = %v, want %v", got, want)
	}
}

func TestUpstreamMessage(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{name: "openai", body: `{"error":{"message":"Server is busy","type":"server_error","code":null}}`, want: "Server is busy"},
		{name: "openai type only", body: `{"error":{"type":"overloaded_error"}}`, want: "overloaded_error"},
		{name: "error string", body: `{"error":"rate limited"}`, want: "rate limited"},
		{name: "vllm", body: `{"object":"error","message":"bad model","type":"BadRequestError","code":400}`, want: "bad model"},
		{name: "fastapi", body: `{"detail":"Not Found"}`, want: "Not Found"},
		{name: "text", body: "upstream connect error", want: "upstream connect error"},
		{name: "json without message", body: `{"x":1}`, want: `{"x":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := upstreamMessage([]byte(tt.body)); got != tt.want {
				t.Errorf("upstreamMessage(%q) = %q, want %q", tt.body, got, tt.want)
			}
		})
	}
}

func TestCleanMessage(t *testing.T) {
	cred := newCredential("sk-123")
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "plain", in: "Server busy", want: "Server busy"},
		{name: "whitespace and controls", in: "  a\n\n\tb\x00c \r\n", want: "a b c"},
		{name: "invalid utf-8", in: "a\xffb", want: "a b"},
		{name: "key", in: "bad key sk-123!", want: "bad key [redacted]!"},
		{name: "other keys", in: "Incorrect API key provided: sk-proj-****abcd; Bearer abc123def", want: "Incorrect API key provided: [redacted]; Bearer [redacted]"},
		{name: "long", in: strings.Repeat("é", 300), want: strings.Repeat("é", maxMessageBytes/2) + "…[clipped 600 bytes]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cleanMessage(tt.in, cred); got != tt.want {
				t.Errorf("cleanMessage(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestHTTPError(t *testing.T) {
	tests := []struct {
		name      string
		err       *HTTPError
		wantText  string
		wantClass breaker.Class
	}{
		{
			name:      "busy",
			err:       &HTTPError{Backend: "b", Status: 503, Message: "Server busy", RetryAfterD: 2 * time.Second},
			wantText:  "backend b: HTTP 503: Server busy (retry after 2s)",
			wantClass: breaker.Busy,
		},
		{
			name:      "no message",
			err:       &HTTPError{Backend: "b", Status: 404},
			wantText:  "backend b: HTTP 404 Not Found",
			wantClass: breaker.Client,
		},
		{
			name:      "malformed",
			err:       &HTTPError{Backend: "b", Status: 200, Message: "no choices", Err: ErrMalformed},
			wantText:  "backend b: HTTP 200: malformed answer: no choices",
			wantClass: breaker.Failed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.wantText, tt.err.Error()); diff != "" {
				t.Errorf("Error() (-want +got):\n%s", diff)
			}
			if got := breaker.Classify(tt.err); got != tt.wantClass {
				t.Errorf("Classify = %v, want %v", got, tt.wantClass)
			}
			if got, want := errors.Is(tt.err, ErrMalformed), tt.err.Err != nil; got != want {
				t.Errorf("errors.Is(ErrMalformed) = %v, want %v", got, want)
			}
		})
	}
}
