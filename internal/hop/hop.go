// Package hop counts the detour instances a call has passed through, so
// that a routing loop (a kind: detour backend that leads back to the
// instance, directly or through a ring of replicas) ends after a few hops
// instead of recursing until a connection's stream limit.
//
// A call carries its count in the gRPC metadata Key: detour's detour-kind
// client sends the count of the call it serves plus one; the server reads
// it, refuses a call over its limit with Refusal, and passes the count on
// in the context:
//
//	n, err := hop.Parse(value) // value of Key in the incoming metadata
//	if n > max {
//		return hop.Refusal(n, max).Err()
//	}
//	ctx = hop.With(ctx, n)
//	...
//	ctx = metadata.AppendToOutgoingContext(ctx, hop.Key, hop.Next(ctx))
//
// Everything here is safe for concurrent use.
package hop

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Key is the metadata key of the hop count: how many detour instances
// passed the call on before the one receiving it. A call from a client
// has none (0).
const Key = "x-detour-hops"

// DefaultMax is the hop limit when the config sets none: room for an edge
// detour, a regional one and a spare, while a loop ends at once.
const DefaultMax = 4

// Reason and Domain name the errdetails.ErrorInfo of a Refusal.
const (
	Reason = "HOP_LIMIT_EXCEEDED"
	Domain = "detour.dev"
)

// ceiling bounds a count Parse accepts.
const ceiling = 1000

var errBad = errors.New("must be a whole number of hops from 0 to 1000")

// Parse reads a Key value; "" is 0.
func Parse(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > ceiling {
		return 0, errBad
	}
	return n, nil
}

type ctxKey struct{}

// With returns ctx carrying n, the hop count of the call it serves.
func With(ctx context.Context, n int) context.Context {
	if n == 0 && From(ctx) == 0 {
		return ctx
	}
	return context.WithValue(ctx, ctxKey{}, n)
}

// From returns the hop count ctx carries, 0 when none.
func From(ctx context.Context) int {
	n, _ := ctx.Value(ctxKey{}).(int)
	return n
}

// Next returns the Key value for a call made to serve ctx's call: its
// count plus one.
func Next(ctx context.Context) string { return strconv.Itoa(From(ctx) + 1) }

// Refusal is the status of a call that arrived after n hops, over max:
// FAILED_PRECONDITION with an errdetails.ErrorInfo (Reason, Domain). The
// caller is another detour, and the fault is in its routing (a backend
// that leads back), so Refused tells it apart from a client error: detour's
// breaker.Classify counts it against that backend and tries another.
func Refusal(n, max int) *status.Status {
	st := status.New(codes.FailedPrecondition, fmt.Sprintf(
		"routing loop: this call has passed through %d detour instances, over limits.max_hops %d: a kind: detour backend leads back to where the call came from", n, max))
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: Reason, Domain: Domain,
		Metadata: map[string]string{"hops": strconv.Itoa(n), "max_hops": strconv.Itoa(max)}}); err == nil {
		st = d
	}
	return st
}

// Refused reports whether s is a Refusal.
func Refused(s *status.Status) bool {
	if s.Code() != codes.FailedPrecondition || len(s.Proto().GetDetails()) == 0 {
		return false
	}
	for _, d := range s.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == Reason && ei.GetDomain() == Domain {
			return true
		}
	}
	return false
}
