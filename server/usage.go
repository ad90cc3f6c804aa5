package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/spend"
)

// Usage implements detour.v1.Admin: the report of the instance's Meter
// (router.Router.Usage), from Redis when the replicas share one.
func (a *Admin) Usage(ctx context.Context, req *detourv1.UsageRequest) (*detourv1.UsageResponse, error) {
	q := spend.Query{Tenant: req.GetTenant()}
	if ts := req.GetSince(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "since: %v", err)
		}
		q.Since = ts.AsTime()
	}
	rep, err := a.rt.Usage(ctx, q)
	if errors.Is(err, spend.ErrUnknownTenant) {
		return nil, status.Errorf(codes.NotFound, "tenant %q is not listed in the config's tenants; the tenants it does not list are reported as %q",
			excerpt.Clip(req.GetTenant(), excerpt.Max), spend.OtherTenant)
	}
	if err != nil {
		return nil, toStatus(a.log, err)
	}
	resp := &detourv1.UsageResponse{From: timestamppb.New(rep.From), To: timestamppb.New(rep.To), Scope: "instance", Currency: rep.Currency}
	if rep.Fleet {
		resp.Scope = "fleet"
	}
	for _, r := range rep.Rows {
		resp.Rows = append(resp.Rows, &detourv1.UsageRow{Tenant: r.Tenant, Model: r.Model, Calls: r.Calls,
			PromptTokens: r.Prompt, CompletionTokens: r.Completion, PromptCacheHitTokens: r.CacheHit, ReasoningTokens: r.Reasoning,
			Spend: r.Spend, SavedCalls: r.SavedCalls, SavedTokens: r.SavedTokens, Savings: r.Savings})
	}
	for _, b := range rep.Budgets {
		resp.Budgets = append(resp.Budgets, &detourv1.BudgetStatus{Tenant: b.Tenant, Period: b.Period, Unit: b.Unit,
			Used: b.Used, Limit: b.Limit, PeriodStart: timestamppb.New(b.Start), PeriodEnd: timestamppb.New(b.End)})
	}
	return resp, nil
}
