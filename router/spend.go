package router

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/spend"
)

// Token metering (package spend) on the path of a call:
//
//   - Router.admit reserves the call's estimate under its tenant's token
//     rate and budget, for each caller, before any call is shared; the
//     caller releases it when its call ends, whatever the outcome.
//   - The upstream call charges what it spent once, in the function the
//     cache shares between identical calls: a call shared by several
//     callers (always of one tenant) is charged once, like the provider
//     bills it. A failed call is charged nothing; a stream cut mid-way is
//     charged its prompt estimate and the text it streamed.
//   - A caller whose answer came without an upstream call of its own (a
//     cache hit, a stale answer, a share of another caller's call, a
//     detour backend's cached answer) is counted as a saving.

// ownCallKey marks a caller's context; the shared function, which runs
// with the values of the caller that started it, sets the mark: a caller
// whose live answer comes without its mark set joined another's call.
type ownCallKey struct{}

func withOwnCall(ctx context.Context) (context.Context, *atomic.Bool) {
	own := &atomic.Bool{}
	return context.WithValue(ctx, ownCallKey{}, own), own
}

func markOwnCall(ctx context.Context) {
	if own, _ := ctx.Value(ownCallKey{}).(*atomic.Bool); own != nil {
		own.Store(true)
	}
}

// upstream reports whether an answer of source s was produced by an
// upstream call (live or fallback), rather than by a cache (detour's or a
// detour backend's).
func upstream(s detourv1.Source) bool {
	return s == detourv1.Source_SOURCE_LIVE || s == detourv1.Source_SOURCE_FALLBACK
}

// overLimit converts a refusal of the Meter to the router's Error.
func overLimit(err error) error {
	var le *spend.LimitError
	if !errors.As(err, &le) {
		return &Error{Code: Internal, Message: "token metering failed", Err: err}
	}
	if le.Limit == spend.LimitBudget {
		return &Error{Code: OverBudget, Until: le.Until, Err: le,
			Message: fmt.Sprintf("budget exhausted until %s: tenant %q has %s of its %s budget of %s %s left, and this call may spend up to %s (its prompt and max_tokens)",
				le.Until.UTC().Format("2006-01-02T15:04:05Z"), le.Tenant, amount(max(le.Max-le.Used, 0)), le.Period, amount(le.Max), le.Unit, amount(le.Reservation))}
	}
	return &Error{Code: OverTokenRate, RetryAfter: le.RetryAfter, Err: le,
		Message: fmt.Sprintf("tenant %q is over its token rate (tpm)", le.Tenant)}
}

// amount prints a count of tokens or money briefly.
func amount(x float64) string {
	switch {
	case x == float64(int64(x)):
		return strconv.FormatInt(int64(x), 10)
	case x >= 100 || x <= -100:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.TrimRight(strconv.FormatFloat(x, 'f', 6, 64), "0")
}

// chargeAnswer charges the tokens of a unary answer an upstream call made,
// once per upstream call.
func (r *Router) chargeAnswer(ctx context.Context, req *detourv1.CompleteRequest, resp *detourv1.CompleteResponse) {
	if !upstream(resp.GetSource()) {
		return
	}
	tk := spend.TokensOf(resp.GetUsage())
	if resp.GetUsage() == nil {
		tk = spend.AnswerTokens(req, resp)
	}
	r.meter.Charge(auth.TenantFrom(ctx), req.GetModel(), resp.GetServedBy().GetBackend(), tk)
}

// tally is what a stream carried: who served it, its usage (in its last
// chunk) and the bytes of its text, for a stream cut before its usage
// came.
type tally struct {
	chunks  int
	source  detourv1.Source
	backend string
	usage   *detourv1.Usage
	bytes   int
}

func (t *tally) see(ch *detourv1.CompleteChunk) {
	if t.chunks == 0 {
		t.source, t.backend = ch.GetSource(), ch.GetServedBy().GetBackend()
	}
	t.chunks++
	t.bytes += spend.ChunkBytes(ch)
	if ch.GetUsage() != nil {
		t.usage = ch.GetUsage()
	}
}

// tokens is what the stream spent: its usage, or for a stream without one
// (cut mid-way) the prompt estimate and the text it streamed.
func (t *tally) tokens(req *detourv1.CompleteRequest) spend.Tokens {
	if t.usage != nil {
		return spend.TokensOf(t.usage)
	}
	return spend.Tokens{Prompt: spend.PromptTokens(req), Completion: spend.TextTokens(t.bytes)}
}

// chargeStream charges what an upstream stream spent, once per upstream
// call; a stream that sent nothing spent nothing.
func (r *Router) chargeStream(ctx context.Context, req *detourv1.CompleteRequest, t *tally) {
	if t.chunks == 0 || !upstream(t.source) {
		return
	}
	r.meter.Charge(auth.TenantFrom(ctx), req.GetModel(), t.backend, t.tokens(req))
}

// saveAnswer counts a caller's unary answer that came without an upstream
// call of its own (own is the caller's mark).
func (r *Router) saveAnswer(ctx context.Context, req *detourv1.CompleteRequest, resp *detourv1.CompleteResponse, own *atomic.Bool) {
	if resp == nil || (upstream(resp.GetSource()) && own.Load()) {
		return
	}
	tk := spend.TokensOf(resp.GetUsage())
	if resp.GetUsage() == nil {
		tk = spend.AnswerTokens(req, resp)
	}
	r.meter.Save(auth.TenantFrom(ctx), req.GetModel(), resp.GetServedBy().GetBackend(), tk)
}

// saveStream is saveAnswer for a stream the caller received.
func (r *Router) saveStream(ctx context.Context, req *detourv1.CompleteRequest, t *tally, own *atomic.Bool) {
	if t.chunks == 0 || (upstream(t.source) && own.Load()) {
		return
	}
	r.meter.Save(auth.TenantFrom(ctx), req.GetModel(), t.backend, t.tokens(req))
}

// Usage reports the tokens, spend and savings per tenant and model, and
// the budgets (see spend.Meter.Report).
func (r *Router) Usage(ctx context.Context, q spend.Query) (spend.Report, error) {
	return r.meter.Report(ctx, q)
}
