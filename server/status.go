package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/detour-dev/detour/internal/excerpt"
	"github.com/detour-dev/detour/router"
)

// maxMessageBytes bounds a status message (and the error of a call log
// line), before its clip mark: detour's words and an excerpt of what the
// caller or an upstream said.
const maxMessageBytes = 384

// maxLogErrorBytes bounds the detail of an error logged in full (detour's
// words and the upstream excerpts they quote, already scrubbed).
const maxLogErrorBytes = 2 << 10

// codeOf is the one table from routing failures to gRPC codes.
var codeOf = map[router.Code]codes.Code{
	router.Unavailable:  codes.Unavailable,
	router.Exhausted:    codes.ResourceExhausted,
	router.OverQuota:    codes.ResourceExhausted,
	router.UnknownModel: codes.NotFound,
	router.Rejected:     codes.InvalidArgument,
	router.Internal:     codes.Internal,
	router.Deferred:     codes.Unavailable,
	// The tenant's token limits (package spend): RetryInfo for the rate,
	// ErrorInfo and QuotaFailure for both (spend.go).
	router.OverTokenRate: codes.ResourceExhausted,
	router.OverBudget:    codes.ResourceExhausted,
}

// toStatus converts an error from the router into the status sent on the
// wire. Internal detail goes to the log, never to the caller.
//
// A routing failure is mapped before a context error: a router *Error may
// wrap an attempt's own timeout (context.DeadlineExceeded), which is the
// backend's, not the caller's deadline.
func toStatus(log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var re *router.Error
	switch {
	case errors.As(err, &re):
		return routingStatus(log, re, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before any backend answered")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call canceled by the caller")
	}
	if _, ok := status.FromError(err); ok {
		return err // already a status (e.g. from the caller's own stream)
	}
	log.Error("unexpected error", "err", excerpt.Clip(err.Error(), maxLogErrorBytes))
	return status.Error(codes.Internal, "internal error")
}

// routingStatus is the status of a routing failure, from the one table.
func routingStatus(log *slog.Logger, re *router.Error, err error) error {
	code, ok := codeOf[re.Code]
	if !ok {
		code = codes.Internal
	}
	// The message may quote the caller (a model name): never more than an
	// excerpt; it never quotes an upstream (the detail is logged).
	msg := excerpt.Clip(re.Message, maxMessageBytes)
	switch {
	case code == codes.Internal:
		log.Error("routing failed", "err", excerpt.Clip(err.Error(), maxLogErrorBytes))
	case re.Code == router.Rejected:
		log.Info("an upstream rejected the request", "backend", re.Backend, "status", re.UpstreamStatus,
			"err", excerpt.Clip(err.Error(), maxLogErrorBytes))
	}
	st := status.New(code, msg)
	if re.Code == router.OverTokenRate || re.Code == router.OverBudget {
		st = spendDetails(st, re)
	}
	if re.RetryAfter > 0 && (code == codes.Unavailable || code == codes.ResourceExhausted) {
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(re.RetryAfter.Round(time.Millisecond))}); err == nil {
			st = d
		}
	}
	return st.Err()
}

// httpOf is the one table from the codes of the statuses above to the HTTP
// face's answers: the status an OpenAI client SDK expects, and the type of
// OpenAI's error JSON. The error's code is the gRPC code in snake_case
// ("resource_exhausted"). 429 and 503 carry Retry-After (and OpenAI's
// retry-after-ms) from the status's RetryInfo, 1 s when it has none.
var httpOf = map[codes.Code]httpError{
	codes.InvalidArgument:   {http.StatusBadRequest, "invalid_request_error"},
	codes.Unauthenticated:   {http.StatusUnauthorized, "authentication_error"},
	codes.PermissionDenied:  {http.StatusForbidden, "permission_error"},
	codes.NotFound:          {http.StatusNotFound, "not_found_error"},
	codes.ResourceExhausted: {http.StatusTooManyRequests, "rate_limit_error"},
	codes.Unavailable:       {http.StatusServiceUnavailable, "server_error"},
	codes.DeadlineExceeded:  {http.StatusGatewayTimeout, "timeout_error"},
	// A routing loop (x-detour-hops over limits.max_hops).
	codes.FailedPrecondition: {http.StatusLoopDetected, "invalid_request_error"},
	codes.Canceled:           {statusClientClosed, "canceled"},
	codes.Internal:           {http.StatusInternalServerError, "server_error"},
}

// httpError is a row of httpOf.
type httpError struct {
	status int
	kind   string // the error JSON's type
}

// statusClientClosed is nginx's 499: the client went away. Nobody reads
// it; the call line and metrics say Canceled.
const statusClientClosed = 499

// httpErrorOf returns the row of code; any code not in the table is a 500.
func httpErrorOf(code codes.Code) httpError {
	if e, ok := httpOf[code]; ok {
		return e
	}
	return httpError{http.StatusInternalServerError, "server_error"}
}
