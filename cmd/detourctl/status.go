package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func statusCmd(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", g, stderr, "status [--addr HOST:PORT] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token-file FILE]")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(stderr, "status", "unexpected arguments %q", pos)
	}
	if err := g.admin.check(); err != nil {
		return usageError(stderr, "status", "%v", err)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	conn, err := g.admin.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := detourv1.NewAdminClient(conn).Status(ctx, &detourv1.StatusRequest{})
	if err != nil {
		return g.admin.explain("status", err)
	}
	if g.json() {
		return printJSON(stdout, st, true)
	}
	printStatus(stdout, st, time.Now())
	return nil
}

func printStatus(w io.Writer, st *detourv1.StatusResponse, now time.Time) {
	fmt.Fprintf(w, "instance   region %s, zone %s\n", orDash(st.GetRegion()), orDash(st.GetZone()))
	at := "-"
	if st.GetAppliedAt() != nil {
		t := st.GetAppliedAt().AsTime()
		at = fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), now.Sub(t).Round(time.Second))
	}
	fmt.Fprintf(w, "config     %s, revision %d, applied %s\n", st.GetConfigSource(), st.GetConfigRevision(), at)
	if r := st.GetLastRejection(); r != nil {
		note := ""
		if r.GetRevision() <= st.GetConfigRevision() {
			note = ", since superseded"
		}
		fmt.Fprintf(w, "rejected   revision %d at %s%s:\n", r.GetRevision(), r.GetAt().AsTime().UTC().Format(time.RFC3339), note)
		for _, reason := range r.GetReasons() {
			fmt.Fprintf(w, "             - %s\n", reason)
		}
	}
	fmt.Fprintf(w, "shared     %s\n", sharedState(st.GetSharedState(), now))
	if rb := st.GetRetryBudget(); rb != nil {
		fmt.Fprintf(w, "budget     %.0f of %.0f extra upstream calls (retries, hedges, past open breakers) in the last 10s\n", rb.GetSpent(), rb.GetAllowed())
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tREGION\tZONE\tKIND\tDRAINED\tBREAKER\tLIMIT\tIN-FLIGHT\tHELD\tQUEUED\tBUSY\tFLOOR\tCAPACITY")
	for _, b := range st.GetBackends() {
		region := b.GetRegion()
		if b.GetFallback() {
			region = "(fallback)"
		}
		c := b.GetCapacity()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", b.GetName(), region, orDash(b.GetZone()), kindName(b.GetKind()),
			map[bool]string{true: "yes", false: "no"}[b.GetDrained()], breakerText(b, now),
			c.GetLimit(), b.GetInFlight(), c.GetHeld(), c.GetQueued(), percent(c.GetBusyShare()), percent(c.GetBusyFloor()), orDash(c.GetState()))
	}
	tw.Flush()
}

// sharedState describes the health of the Redis the replicas share.
func sharedState(s *detourv1.SharedStateStatus, now time.Time) string {
	if s == nil {
		return "none (no --redis-addr): cache, cooldowns and limits are local to this instance"
	}
	if !s.GetChecked() {
		return fmt.Sprintf("redis %s: not checked yet", s.GetAddr())
	}
	since := "-"
	if s.GetSince() != nil {
		t := s.GetSince().AsTime()
		since = fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), now.Sub(t).Round(time.Second))
	}
	errs := fmt.Sprintf("%d %s", s.GetErrors(), plural(int(s.GetErrors()), "error", "errors"))
	if s.GetLastError() != "" {
		errs += ", last: " + s.GetLastError()
	}
	if s.GetUp() {
		return fmt.Sprintf("redis %s: up since %s; %s", s.GetAddr(), since, errs)
	}
	return fmt.Sprintf("redis %s: UNREACHABLE since %s: cache, cooldowns and limits are local to this instance; %s", s.GetAddr(), since, errs)
}

// breakerText is the breaker state, with how long it stays open and whether
// another replica holds it open (a shared cooldown through Redis).
func breakerText(b *detourv1.BackendStatus, now time.Time) string {
	s := b.GetBreakerState()
	if u := b.GetOpenUntil(); u != nil && u.AsTime().After(now) {
		left := u.AsTime().Sub(now).Round(100 * time.Millisecond)
		if b.GetSharedCooldown() {
			return fmt.Sprintf("%s, fleet cooldown %s", s, left)
		}
		return fmt.Sprintf("%s %s", s, left)
	}
	return s
}

func percent(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }

func kindName(k detourv1.ProviderKind) string {
	switch k {
	case detourv1.ProviderKind_PROVIDER_KIND_OPENAI:
		return "openai"
	case detourv1.ProviderKind_PROVIDER_KIND_DETOUR:
		return "detour"
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func resetBreakerCmd(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reset-breaker", g, stderr, "reset-breaker BACKEND [--addr HOST:PORT] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token-file FILE]")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageError(stderr, "reset-breaker", "want exactly one BACKEND, got %q", pos)
	}
	if err := g.admin.check(); err != nil {
		return usageError(stderr, "reset-breaker", "%v", err)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	conn, err := g.admin.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := detourv1.NewAdminClient(conn).ResetBreaker(ctx, &detourv1.ResetBreakerRequest{Backend: pos[0]})
	if err != nil {
		return g.admin.explain("reset-breaker", err)
	}
	if g.json() {
		return writeJSON(stdout, map[string]any{"backend": pos[0], "was_open": resp.GetWasOpen()})
	}
	if resp.GetWasOpen() {
		fmt.Fprintf(stdout, "reset %s: its breaker is closed on %s and the fleet's cooldown is cleared\n", pos[0], g.admin.addr)
	} else {
		fmt.Fprintf(stdout, "%s was not open on %s; nothing to reset\n", pos[0], g.admin.addr)
	}
	return nil
}
