package breaker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/hop"
)

// Class is the one classification of an upstream outcome that the breaker,
// the capacity limits, the retry loop, the balancer and the metrics share.
type Class int

const (
	// OK: the backend answered.
	OK Class = iota
	// Busy: the backend is up but overloaded (HTTP 429/503/529, a
	// "busy"/"overloaded" body, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED from the
	// server). It is capacity, not an outage: the call is retried, the
	// backend's adaptive limit learns from it, and only a backend busy on
	// practically every call trips its breaker.
	Busy
	// Failed: the backend broke in another way (other 5xx, a malformed answer,
	// a stream cut short, a detour backend refusing a call that looped back
	// to it). Retried elsewhere; counts against the backend.
	Failed
	// Client: the request itself was refused (400, 409, 413, 422,
	// INVALID_ARGUMENT, ...). Not retried; never trips a breaker.
	Client
	// Canceled: the caller went away. Neither retried nor counted.
	Canceled
	// Down: the backend could not be reached or did not answer in time
	// (connection refused or reset, attempt timeouts, DNS or TLS failures,
	// gRPC transport errors). Retried elsewhere; a few in a row open the
	// breaker.
	Down
	// Exhausted: the account behind the backend cannot pay for calls (HTTP
	// 402 "Insufficient Balance", or a 429 or gRPC RESOURCE_EXHAUSTED that
	// says the quota is used up or the balance is insufficient).
	// Every call there fails the same way until someone tops the account up:
	// retried on other backends and the fallbacks, and the backend is kept
	// out of rotation for its exhausted_for (regions.Backend.ExhaustedFor)
	// rather than probed by the breaker.
	Exhausted
)

func (c Class) String() string {
	switch c {
	case OK:
		return "ok"
	case Busy:
		return "busy"
	case Failed:
		return "failed"
	case Client:
		return "client_error"
	case Canceled:
		return "canceled"
	case Down:
		return "down"
	case Exhausted:
		return "exhausted"
	}
	return "unknown"
}

// StatusCoder is implemented by upstream errors that carry an HTTP status.
type StatusCoder interface {
	StatusCode() int
}

// RetryAfterer is implemented by upstream errors that carry a Retry-After hint.
type RetryAfterer interface {
	RetryAfter() time.Duration
}

// Classify sorts an upstream error. A nil error is OK. The caller's own
// cancellation must be told apart by the caller (see router), since a
// per-attempt timeout and a caller deadline both surface as
// context.DeadlineExceeded: Classify treats DeadlineExceeded as Down (a
// backend that did not answer in time) and Canceled as Canceled.
func Classify(err error) Class {
	if err == nil {
		return OK
	}
	var sc StatusCoder
	if errors.As(err, &sc) {
		return classifyHTTP(sc.StatusCode(), err.Error())
	}
	if errors.Is(err, context.Canceled) {
		return Canceled
	}
	if unreachable(err) {
		return Down
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.OK:
			return OK
		case codes.Unavailable:
			if transportFailure(s.Message()) {
				return Down
			}
			return Busy
		case codes.ResourceExhausted:
			if quotaUsedUp(s.Message()) {
				return Exhausted // a model server's "Insufficient Balance"
			}
			return Busy
		case codes.DeadlineExceeded:
			return Down
		case codes.Canceled:
			return Canceled
		case codes.FailedPrecondition:
			if hop.Refused(s) {
				// A detour backend refused a call that looped back to it:
				// the fault is this backend's routing, not the request.
				return Failed
			}
			return Client
		case codes.NotFound, codes.PermissionDenied, codes.Unauthenticated:
			return Failed // the backend's setup, not the caller's request: Misdirected
		case codes.InvalidArgument, codes.OutOfRange, codes.Unimplemented, codes.AlreadyExists:
			return Client
		case codes.Unknown:
			if mentionsBusy(s.Message()) {
				return Busy
			}
		}
		return Failed
	}
	if mentionsBusy(err.Error()) {
		return Busy
	}
	return Failed
}

// unreachable reports errors that mean no answer came from the backend at
// all: it refused or dropped the connection, did not answer in time, or
// could not be resolved or verified.
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dns *net.DNSError
	var verify *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var alert tls.AlertError
	var header tls.RecordHeaderError
	return errors.As(err, &dns) || errors.As(err, &verify) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostname) || errors.As(err, &alert) || errors.As(err, &header)
}

// transportFailure reports a gRPC UNAVAILABLE that grpc-go made itself
// because the connection failed, as opposed to one the server sent.
func transportFailure(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"connection error", "connection refused", "connection reset",
		"connection closed", "transport:", "no such host", "name resolver", "handshake failed", "error reading server preface"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func classifyHTTP(code int, msg string) Class {
	switch {
	case code == http.StatusPaymentRequired:
		return Exhausted
	case code == http.StatusTooManyRequests && quotaUsedUp(msg):
		return Exhausted
	case code == http.StatusTooManyRequests, code == http.StatusServiceUnavailable, code == 529:
		return Busy
	case code == http.StatusRequestTimeout:
		return Busy
	case code == http.StatusGatewayTimeout:
		return Down
	case code >= 500:
		if mentionsBusy(msg) {
			return Busy
		}
		return Failed
	case code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusNotFound:
		return Failed // detour's credentials or base URL: Misdirected
	case code >= 400:
		return Client
	case code >= 200 && code < 300:
		// A 2xx with an error means the body was unusable.
		return Failed
	}
	return Failed
}

// quotaUsedUp reports OpenAI's 429 for an account out of credit ("You
// exceeded your current quota, please check your plan and billing details",
// code insufficient_quota), as opposed to a rate limit.
func quotaUsedUp(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "insufficient_quota") || strings.Contains(m, "exceeded your current quota") ||
		strings.Contains(m, "insufficient balance")
}

func mentionsBusy(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "busy") || strings.Contains(m, "overloaded") ||
		strings.Contains(m, "rate limit") || strings.Contains(m, "try again later") ||
		strings.Contains(m, "retry later")
}

// Misdirected reports an upstream that refused detour's own request setup
// rather than the caller's request: its credentials (HTTP 401, 403; gRPC
// UNAUTHENTICATED, PERMISSION_DENIED) or its endpoint (HTTP 404 for a wrong
// base URL or a model the backend does not have though the config says it
// does; gRPC NOT_FOUND from a detour backend that serves no such model). It
// is Failed: tried on another backend, counted by the breaker, and never
// reported to the caller as its own fault.
func Misdirected(err error) bool {
	if err == nil {
		return false
	}
	var sc StatusCoder
	if errors.As(err, &sc) {
		c := sc.StatusCode()
		return c == http.StatusUnauthorized || c == http.StatusForbidden || c == http.StatusNotFound
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.NotFound, codes.PermissionDenied, codes.Unauthenticated:
			return true
		}
	}
	return false
}

// RetryAfter returns the upstream Retry-After hint carried by err, or 0.
func RetryAfter(err error) time.Duration {
	var ra RetryAfterer
	if errors.As(err, &ra) {
		return ra.RetryAfter()
	}
	return 0
}
