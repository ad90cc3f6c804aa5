package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// usageCmd prints the tokens, spend and savings per tenant and model, and
// the budgets, from detour.v1.Admin/Usage at --addr: the counters the
// replicas share in Redis, read by that instance, so detourctl needs no
// Redis credentials; an instance without Redis reports its own.
func usageCmd(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("usage", g, stderr, "usage [--tenant T] [--since 24h|7d|2026-05-01|RFC3339] [--addr HOST:PORT] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token-file FILE]")
	tenant := fs.String("tenant", "", "one tenant (a tenant of the config, or \"other\" for those it does not list); empty: every tenant")
	since := fs.String("since", "", "start of the report: a duration back from now (90m, 24h, 7d), a date (2026-05-01, UTC) or an RFC 3339 time; rounded down to the hour; empty: the start of today (UTC)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(stderr, "usage", "unexpected arguments %q", pos)
	}
	req := &detourv1.UsageRequest{Tenant: *tenant}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			return usageError(stderr, "usage", "--since %q: %v", *since, err)
		}
		req.Since = timestamppb.New(t)
	}
	if err := g.admin.check(); err != nil {
		return usageError(stderr, "usage", "%v", err)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	conn, err := g.admin.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := detourv1.NewAdminClient(conn).Usage(ctx, req)
	if err != nil {
		return g.admin.explain("usage", err)
	}
	if g.json() {
		return printJSON(stdout, resp, true)
	}
	printUsage(stdout, resp)
	return nil
}

// parseSince reads --since: a duration back from now (Go's, or a number
// of days "7d"), a date in UTC, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(d); err == nil && n >= 0 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("a duration back from now must be positive")
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("want a duration (90m, 24h, 7d), a date (2026-05-01) or an RFC 3339 time")
}

func printUsage(w io.Writer, r *detourv1.UsageResponse) {
	scope := "fleet (the counters every replica writes to Redis)"
	if r.GetScope() != "fleet" {
		scope = "this instance only (no Redis, or Redis did not answer): other replicas are not counted"
	}
	fmt.Fprintf(w, "usage      %s to %s, %s\n", r.GetFrom().AsTime().UTC().Format(time.RFC3339), r.GetTo().AsTime().UTC().Format(time.RFC3339), scope)
	fmt.Fprintf(w, "currency   %s\n\n", r.GetCurrency())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TENANT\tMODEL\tCALLS\tPROMPT\tCOMPLETION\tCACHE-HIT\tREASONING\tSPEND\tSAVED CALLS\tSAVED TOKENS\tSAVINGS\t")
	var total detourv1.UsageRow
	for _, row := range r.GetRows() {
		printRow(tw, row.GetTenant(), row.GetModel(), row)
		total.Calls += row.GetCalls()
		total.PromptTokens += row.GetPromptTokens()
		total.CompletionTokens += row.GetCompletionTokens()
		total.PromptCacheHitTokens += row.GetPromptCacheHitTokens()
		total.ReasoningTokens += row.GetReasoningTokens()
		total.Spend += row.GetSpend()
		total.SavedCalls += row.GetSavedCalls()
		total.SavedTokens += row.GetSavedTokens()
		total.Savings += row.GetSavings()
	}
	if len(r.GetRows()) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t\t\t\t\t\t\t")
	} else if len(r.GetRows()) > 1 {
		printRow(tw, "total", "", &total)
	}
	tw.Flush()
	if len(r.GetBudgets()) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tPERIOD\tUSED\tLIMIT\tUSED %\tSTARTS AFRESH")
	for _, b := range r.GetBudgets() {
		share := "-"
		if b.GetLimit() > 0 {
			share = fmt.Sprintf("%.1f%%", 100*b.GetUsed()/b.GetLimit())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s %s\t%s\t%s\n", b.GetTenant(), b.GetPeriod(), money(b.GetUsed()), b.GetUnit(),
			money(b.GetLimit()), b.GetUnit(), share, b.GetPeriodEnd().AsTime().UTC().Format(time.RFC3339))
	}
	tw.Flush()
}

func printRow(tw io.Writer, tenant, model string, r *detourv1.UsageRow) {
	fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%s\t\n", tenant, model, r.GetCalls(), r.GetPromptTokens(), r.GetCompletionTokens(),
		r.GetPromptCacheHitTokens(), r.GetReasoningTokens(), money(r.GetSpend()), r.GetSavedCalls(), r.GetSavedTokens(), money(r.GetSavings()))
}

// money prints an amount (or a count of tokens) with the digits that
// matter: calls cost fractions of a cent.
func money(x float64) string {
	switch {
	case x == float64(int64(x)):
		return strconv.FormatInt(int64(x), 10)
	case x >= 100:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'f', 6, 64)
	}
}
