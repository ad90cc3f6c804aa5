package breaker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/hop"
)

// httpError is an upstream HTTP error, as provider returns them.
type httpError struct {
	code       int
	msg        string
	retryAfter time.Duration
}

func (e *httpError) Error() string             { return fmt.Sprintf("http %d: %s", e.code, e.msg) }
func (e *httpError) StatusCode() int           { return e.code }
func (e *httpError) RetryAfter() time.Duration { return e.retryAfter }

var (
	_ StatusCoder  = (*httpError)(nil)
	_ RetryAfterer = (*httpError)(nil)
)

// timeoutError is a net.Error that timed out.
type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var _ net.Error = timeoutError{}

func dialError(errno syscall.Errno) error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"nil", nil, OK},

		{"http 429", &httpError{code: 429}, Busy},
		{"http 503", &httpError{code: 503}, Busy},
		{"http 529", &httpError{code: 529}, Busy},
		{"http 408", &httpError{code: 408}, Busy},
		{"http 500", &httpError{code: 500, msg: "internal error"}, Failed},
		{"http 500 overloaded", &httpError{code: 500, msg: "Server Overloaded"}, Busy},
		{"http 502 busy", &httpError{code: 502, msg: "server busy, please retry later"}, Busy},
		{"http 400", &httpError{code: 400, msg: "server busy"}, Client},
		{"http 401: detour's credentials", &httpError{code: 401}, Failed},
		{"http 403: detour's credentials", &httpError{code: 403}, Failed},
		{"http 404: detour's endpoint", &httpError{code: 404}, Failed},
		{"http 409", &httpError{code: 409}, Client},
		{"http 422", &httpError{code: 422}, Client},
		{"http 200 unusable body", &httpError{code: 200}, Failed},
		{"http wrapped", fmt.Errorf("backend eu-1: %w", &httpError{code: 503}), Busy},
		{"http 402 insufficient balance", &httpError{code: 402, msg: "Insufficient Balance"}, Exhausted},
		{"http 402 no body", &httpError{code: 402}, Exhausted},
		{"http 429 quota used up", &httpError{code: 429, msg: "You exceeded your current quota, please check your plan and billing details."}, Exhausted},
		{"http 429 insufficient_quota", &httpError{code: 429, msg: "insufficient_quota"}, Exhausted},
		{"http 429 rate limit", &httpError{code: 429, msg: "Rate limit reached for requests"}, Busy},

		{"canceled", context.Canceled, Canceled},
		{"canceled wrapped", fmt.Errorf("attempt: %w", context.Canceled), Canceled},
		{"deadline exceeded", context.DeadlineExceeded, Down},
		{"connection refused", dialError(syscall.ECONNREFUSED), Down},
		{"connection reset", dialError(syscall.ECONNRESET), Down},
		{"broken pipe", dialError(syscall.EPIPE), Down},
		{"net timeout", &net.OpError{Op: "read", Net: "tcp", Err: timeoutError{}}, Down},

		{"grpc unavailable", status.Error(codes.Unavailable, "no"), Busy},
		{"grpc unavailable from the server", status.Error(codes.Unavailable, "Server busy, please retry later"), Busy},
		{"grpc transport refused", status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`), Down},
		{"grpc name resolution", status.Error(codes.Unavailable, "name resolver error: produced zero addresses"), Down},
		{"dns", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "nope.invalid"}}, Down},
		{"tls unknown authority", fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), Down},
		{"tls verification", &tls.CertificateVerificationError{Err: errors.New("expired")}, Down},
		{"http 504", &httpError{code: 504}, Down},
		{"grpc resource exhausted", status.Error(codes.ResourceExhausted, "quota"), Busy},
		{"grpc insufficient balance", status.Error(codes.ResourceExhausted, "Insufficient Balance"), Exhausted},
		{"grpc deadline exceeded", status.Error(codes.DeadlineExceeded, "slow"), Down},
		{"grpc canceled", status.Error(codes.Canceled, "gone"), Canceled},
		{"grpc invalid argument", status.Error(codes.InvalidArgument, "bad"), Client},
		{"grpc not found: the backend serves no such model", status.Error(codes.NotFound, "no model"), Failed},
		{"grpc permission denied: detour's credentials", status.Error(codes.PermissionDenied, "no"), Failed},
		{"grpc unauthenticated: detour's credentials", status.Error(codes.Unauthenticated, "no"), Failed},
		{"grpc failed precondition", status.Error(codes.FailedPrecondition, "no"), Client},
		{"grpc out of range", status.Error(codes.OutOfRange, "no"), Client},
		{"grpc unimplemented", status.Error(codes.Unimplemented, "no"), Client},
		{"grpc already exists", status.Error(codes.AlreadyExists, "no"), Client},
		{"grpc unknown busy", status.Error(codes.Unknown, "model is overloaded"), Busy},
		{"grpc unknown", status.Error(codes.Unknown, "boom"), Failed},
		{"grpc internal", status.Error(codes.Internal, "busy"), Failed},
		{"grpc wrapped", fmt.Errorf("backend eu-1: %w", status.Error(codes.Unavailable, "no")), Busy},

		{"text busy", errors.New("Server is busy, please try again later"), Busy},
		{"text rate limit", errors.New("rate limit reached"), Busy},
		{"text other", errors.New("malformed answer"), Failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Classify(tt.err)); diff != "" {
				t.Errorf("Classify(%v) (-want +got):\n%s", tt.err, diff)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want time.Duration
	}{
		{"nil", nil, 0},
		{"none", errors.New("busy"), 0},
		{"http", &httpError{code: 429, retryAfter: 3 * time.Second}, 3 * time.Second},
		{"wrapped", fmt.Errorf("eu-1: %w", &httpError{code: 503, retryAfter: time.Minute}), time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, RetryAfter(tt.err)); diff != "" {
				t.Errorf("RetryAfter(%v) (-want +got):\n%s", tt.err, diff)
			}
		})
	}
}

func TestClassString(t *testing.T) {
	tests := []struct {
		c    Class
		want string
	}{
		{OK, "ok"},
		{Busy, "busy"},
		{Failed, "failed"},
		{Client, "client_error"},
		{Canceled, "canceled"},
		{Down, "down"},
		{Exhausted, "exhausted"},
		{Class(42), "unknown"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Class(%d).String() = %q, want %q", int(tt.c), got, tt.want)
		}
	}
}

// TestHopLimitIsABackendFault: a detour backend that refuses a call for
// having passed through too many detours (a routing loop) failed, like a
// broken backend: the call is tried elsewhere and the breaker counts it.
// Any other FAILED_PRECONDITION stays the caller's.
func TestHopLimitIsABackendFault(t *testing.T) {
	refusal := hop.Refusal(5, 4).Err()
	if got := Classify(refusal); got != Failed {
		t.Errorf("Classify(hop refusal) = %v, want %v", got, Failed)
	}
	if got := Classify(fmt.Errorf("backend b: %w", refusal)); got != Failed {
		t.Errorf("Classify(wrapped hop refusal) = %v, want %v", got, Failed)
	}
	if got := Classify(status.Error(codes.FailedPrecondition, "x")); got != Client {
		t.Errorf("Classify(FAILED_PRECONDITION) = %v, want %v", got, Client)
	}
}

func TestMisdirected(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&httpError{code: 401}, true},
		{&httpError{code: 403}, true},
		{fmt.Errorf("backend x: %w", &httpError{code: 404}), true},
		{&httpError{code: 400}, false},
		{&httpError{code: 503}, false},
		{status.Error(codes.Unauthenticated, "bad token"), true},
		{status.Error(codes.PermissionDenied, "no"), true},
		{fmt.Errorf("backend x: %w", status.Error(codes.NotFound, "no backend serves model")), true},
		{status.Error(codes.InvalidArgument, "bad"), false},
		{errors.New("connection refused"), false},
	}
	for _, tt := range tests {
		if got := Misdirected(tt.err); got != tt.want {
			t.Errorf("Misdirected(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
