package router

import (
	"fmt"
	"time"
)

// Code is the kind of failure a Router reports. server/ maps each Code to a
// gRPC status in one table.
type Code int

const (
	// Unavailable: no primary or fallback could answer (busy, open, failed).
	Unavailable Code = iota + 1
	// Exhausted: backend limits or upstream rate limits refused the call.
	Exhausted
	// OverQuota: the caller's tenant is over its quota.
	OverQuota
	// UnknownModel: no configured backend serves the requested model.
	UnknownModel
	// Rejected: the upstream refused the request itself (HTTP 400, 422,
	// INVALID_ARGUMENT); retrying elsewhere would not help.
	Rejected
	// Internal: detour or a backend misbehaved in a way the caller cannot fix
	// (for example every backend tried refused detour's credentials or had
	// no such endpoint).
	Internal
	// Deferred: a background call (WithBackground) found no spare capacity,
	// or gave its slot to an interactive call; RetryAfter says when to try
	// again. It never reaches an interactive caller.
	Deferred
	// OverTokenRate: the caller's tenant is over its token rate (tpm);
	// RetryAfter says when it admits a call again.
	OverTokenRate
	// OverBudget: the caller's tenant has spent its budget for the period
	// that ends at Until.
	OverBudget
)

func (c Code) String() string {
	switch c {
	case Unavailable:
		return "unavailable"
	case Exhausted:
		return "exhausted"
	case OverQuota:
		return "over_quota"
	case UnknownModel:
		return "unknown_model"
	case Rejected:
		return "rejected"
	case Internal:
		return "internal"
	case Deferred:
		return "deferred"
	case OverTokenRate:
		return "over_token_rate"
	case OverBudget:
		return "over_budget"
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Error is a routing failure. Message is safe to show the caller; Err holds
// the upstream detail for logs.
type Error struct {
	Code    Code
	Message string
	// RetryAfter hints when a retry may succeed; zero when unknown.
	RetryAfter time.Duration
	// Until is when an exhausted budget starts afresh (OverBudget).
	Until time.Time
	// Attempts is the number of upstream calls made.
	Attempts int
	// UpstreamStatus is the HTTP status of a Rejected answer, when known.
	UpstreamStatus int
	// Backend and Region are those of the call's last attempt, for logs;
	// empty when no attempt was made.
	Backend, Region string
	Err             error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Message, e.Err)
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }
