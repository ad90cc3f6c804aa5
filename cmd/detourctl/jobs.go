package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// jobsFlags are the flags of the jobs commands.
type jobsFlags struct {
	tenant string
	states string
	limit  int
	page   string
}

// jobsCommand parses a jobs command's flags and dials detour.v1.Jobs at
// --addr. The tenant goes in x-detour-tenant (whose jobs a caller is while
// authentication is off) and in the request (which an admin may name).
func jobsCommand(ctx context.Context, g *globals, name, synopsis string, args []string, stderr io.Writer, f *jobsFlags,
	more func(fs *flag.FlagSet)) ([]string, context.Context, detourv1.JobsClient, func(), error) {
	fs := newFlags("jobs "+name, g, stderr, synopsis)
	fs.StringVar(&f.tenant, "tenant", "", "the tenant whose jobs these are (with --auth off: the caller's tenant; an admin may name any; empty: the caller's own, or every tenant for an admin)")
	if more != nil {
		more(fs)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if err := g.admin.check(); err != nil {
		return nil, nil, nil, nil, usageError(stderr, "jobs "+name, "%v", err)
	}
	conn, err := g.admin.dial()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := g.withTimeout(ctx)
	if f.tenant != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-detour-tenant", f.tenant)
	}
	return pos, ctx, detourv1.NewJobsClient(conn), func() { cancel(); conn.Close() }, nil
}

func jobsList(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	var f jobsFlags
	pos, ctx, c, done, err := jobsCommand(ctx, g, "list", "jobs list [--tenant T] [--state queued,running,...] [--limit N] [--page TOKEN] [--addr HOST:PORT]",
		args, stderr, &f, func(fs *flag.FlagSet) {
			fs.StringVar(&f.states, "state", "", "comma-separated states to keep: queued, running, succeeded, failed, canceled, expired (empty: all)")
			fs.IntVar(&f.limit, "limit", 50, "most jobs to print (at most 500)")
			fs.StringVar(&f.page, "page", "", "the next-page token a previous list printed")
		})
	if err != nil {
		return err
	}
	defer done()
	if len(pos) > 0 {
		return usageError(stderr, "jobs list", "unexpected arguments %q", pos)
	}
	req := &detourv1.ListJobsRequest{Tenant: f.tenant, PageSize: int32(f.limit), PageToken: f.page}
	for _, s := range splitList(f.states) {
		v, ok := detourv1.JobState_value["JOB_STATE_"+strings.ToUpper(s)]
		if !ok || v == 0 {
			return usageError(stderr, "jobs list", "--state %q: want queued, running, succeeded, failed, canceled or expired", s)
		}
		req.States = append(req.States, detourv1.JobState(v))
	}
	resp, err := c.List(ctx, req)
	if err != nil {
		return g.admin.explain("jobs list", err)
	}
	if g.json() {
		return printJSON(stdout, resp, false)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTENANT\tCLASS\tSTATE\tRUNS\tAGE\tKEY\tOUTCOME")
	for _, j := range resp.GetJobs() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", j.GetId(), j.GetTenant(), className(j.GetClass()), stateName(j.GetState()),
			j.GetRuns(), now.Sub(j.GetCreatedAt().AsTime()).Round(time.Second), orDash(j.GetIdempotencyKey()), outcome(j))
	}
	tw.Flush()
	if t := resp.GetNextPageToken(); t != "" {
		fmt.Fprintf(stdout, "\nmore: detourctl jobs list --page %s (same flags)\n", t)
	}
	return nil
}

func jobsGet(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	var f jobsFlags
	pos, ctx, c, done, err := jobsCommand(ctx, g, "get", "jobs get ID [--tenant T] [--addr HOST:PORT]", args, stderr, &f, nil)
	if err != nil {
		return err
	}
	defer done()
	if len(pos) != 1 {
		return usageError(stderr, "jobs get", "want exactly one job ID, got %q", pos)
	}
	j, err := c.Get(ctx, &detourv1.GetJobRequest{Id: pos[0], Tenant: f.tenant})
	if err != nil {
		return g.admin.explain("jobs get", err)
	}
	if g.json() {
		return printJSON(stdout, j, false)
	}
	printJob(stdout, j)
	return nil
}

func jobsCancel(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	var f jobsFlags
	pos, ctx, c, done, err := jobsCommand(ctx, g, "cancel", "jobs cancel ID [--tenant T] [--addr HOST:PORT]", args, stderr, &f, nil)
	if err != nil {
		return err
	}
	defer done()
	if len(pos) != 1 {
		return usageError(stderr, "jobs cancel", "want exactly one job ID, got %q", pos)
	}
	j, err := c.Cancel(ctx, &detourv1.CancelJobRequest{Id: pos[0], Tenant: f.tenant})
	if err != nil {
		return g.admin.explain("jobs cancel", err)
	}
	if g.json() {
		return printJSON(stdout, j, false)
	}
	switch j.GetState() {
	case detourv1.JobState_JOB_STATE_CANCELED:
		fmt.Fprintf(stdout, "job %s canceled\n", j.GetId())
	case detourv1.JobState_JOB_STATE_RUNNING:
		fmt.Fprintf(stdout, "job %s is stopping: its upstream call is being cancelled\n", j.GetId())
	default:
		fmt.Fprintf(stdout, "job %s had already ended %s; nothing to cancel\n", j.GetId(), stateName(j.GetState()))
	}
	return nil
}

func printJob(w io.Writer, j *detourv1.Job) {
	fmt.Fprintf(w, "job        %s (tenant %s, class %s, key %s)\n", j.GetId(), j.GetTenant(), className(j.GetClass()), orDash(j.GetIdempotencyKey()))
	fmt.Fprintf(w, "state      %s after %d %s\n", stateName(j.GetState()), j.GetRuns(), plural(int(j.GetRuns()), "run", "runs"))
	fmt.Fprintf(w, "created    %s\n", j.GetCreatedAt().AsTime().UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "not after  %s\n", j.GetNotAfter().AsTime().UTC().Format(time.RFC3339))
	if j.GetFinishedAt() != nil {
		fmt.Fprintf(w, "finished   %s\n", j.GetFinishedAt().AsTime().UTC().Format(time.RFC3339))
	}
	if r := j.GetRequest(); r != nil {
		fmt.Fprintf(w, "request    model %s, %d %s\n", r.GetModel(), len(r.GetMessages()), plural(len(r.GetMessages()), "message", "messages"))
	}
	fmt.Fprintf(w, "outcome    %s\n", outcome(j))
	if r := j.GetResult(); r != nil {
		fmt.Fprintf(w, "\n%s\n", r.GetContent())
	}
}

// outcome summarises a job's answer or error in one line.
func outcome(j *detourv1.Job) string {
	switch {
	case j.GetResult() != nil:
		r := j.GetResult()
		return fmt.Sprintf("answered by %s/%s (%s, %d %s, %d tokens)", r.GetServedBy().GetRegion(), r.GetServedBy().GetBackend(),
			strings.ToLower(strings.TrimPrefix(r.GetSource().String(), "SOURCE_")), r.GetAttempts(), plural(int(r.GetAttempts()), "attempt", "attempts"), r.GetUsage().GetTotalTokens())
	case j.GetError() != nil:
		return fmt.Sprintf("%s: %s", codeName(j.GetError().GetCode()), j.GetError().GetMessage())
	}
	return "-"
}

func stateName(s detourv1.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

func className(c detourv1.JobClass) string {
	if c == detourv1.JobClass_JOB_CLASS_UNSPECIFIED {
		return "normal"
	}
	return strings.ToLower(strings.TrimPrefix(c.String(), "JOB_CLASS_"))
}

func codeName(c int32) string {
	return strings.ReplaceAll(strings.ToUpper(codeWords(codes.Code(c))), " ", "_")
}
