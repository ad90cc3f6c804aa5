package server

import (
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/spend"
)

// Reasons of the ErrorInfo of a call refused by its tenant's token limits,
// in ErrorDomain.
const (
	ReasonTokenRate = "TOKEN_RATE_EXCEEDED"
	ReasonBudget    = "BUDGET_EXHAUSTED"
)

// ErrorDomain is the domain of detour's ErrorInfo details.
const ErrorDomain = "detour.dev"

// spendDetails adds to st (RESOURCE_EXHAUSTED) what a program needs to
// tell a tenant's token limit from a busy backend: an ErrorInfo (reason
// TOKEN_RATE_EXCEEDED or BUDGET_EXHAUSTED; metadata tenant, limit, and for
// a budget period and until, RFC 3339) and a QuotaFailure naming the
// tenant's limit. A budget gets no RetryInfo: a client that honours it
// would sleep until the period ends; it says "until" instead.
func spendDetails(st *status.Status, re *router.Error) *status.Status {
	var le *spend.LimitError
	if !errors.As(re, &le) {
		return st
	}
	info := &errdetails.ErrorInfo{Reason: ReasonTokenRate, Domain: ErrorDomain,
		Metadata: map[string]string{"tenant": le.Tenant, "limit": le.Limit}}
	violation := &errdetails.QuotaFailure_Violation{Subject: "tenant:" + le.Tenant,
		Description: "tokens per minute (spend tpm) of tenant " + le.Tenant}
	if le.Limit == spend.LimitBudget {
		info.Reason = ReasonBudget
		info.Metadata["period"] = le.Period
		info.Metadata["until"] = le.Until.UTC().Format(time.RFC3339)
		violation.Description = le.Period + " budget of tenant " + le.Tenant + ", exhausted until " + info.Metadata["until"]
	}
	if d, err := st.WithDetails(info, &errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{violation}}); err == nil {
		return d
	}
	return st
}
