package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/excerpt"
	"github.com/detour-dev/detour/jobs"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Jobs implements detour.v1.Jobs over a jobs.Engine. It is safe for
// concurrent use. Watch blocks until its job is final or the caller goes.
//
// A call's tenant is resolved as for the Router service (the authenticated
// tenant, or x-detour-tenant while authentication is off). A request's
// tenant field may name another tenant only for an admin, who may also
// leave it empty to see every tenant's jobs (detourctl jobs); an admin
// cannot submit.
type Jobs struct {
	detourv1.UnimplementedJobsServer
	s   *Server
	eng *jobs.Engine
}

// ServeJobs registers the detour.v1.Jobs service over eng on s. Call it
// before Serve.
func (s *Server) ServeJobs(eng *jobs.Engine) *Jobs {
	j := &Jobs{s: s, eng: eng}
	detourv1.RegisterJobsServer(s.grpc, j)
	s.health.SetServingStatus(detourv1.Jobs_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return j
}

// JobStatus returns the conversion of a routing error into the status a
// Complete call returns (the one table, status.go), which a failed job
// records (jobs.Config.Status).
func JobStatus(log *slog.Logger) func(error) *status.Status {
	return func(err error) *status.Status { return status.Convert(toStatus(log, err)) }
}

// jobCodeOf is the one table from the job engine's errors to gRPC codes.
var jobCodeOf = []struct {
	err  error
	code codes.Code
}{
	{jobs.ErrNotFound, codes.NotFound},
	{jobs.ErrKeyReused, codes.AlreadyExists},
	{jobs.ErrTooMany, codes.ResourceExhausted},
	{jobs.ErrInvalid, codes.InvalidArgument},
}

// jobStatus converts an error of the job engine into a status.
func (j *Jobs) jobStatus(err error) error {
	for _, c := range jobCodeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, excerpt.Clip(err.Error(), maxMessageBytes))
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call canceled by the caller")
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	j.s.log.Error("jobs", "err", excerpt.Clip(err.Error(), maxLogErrorBytes))
	return status.Error(codes.Internal, "internal error")
}

// tenant resolves whose jobs a call is about: the caller's tenant, or for
// an admin the tenant named (empty: every tenant).
func (j *Jobs) tenant(ctx context.Context, named string) (string, error) {
	if id, ok := auth.IdentityFrom(ctx); ok && id.Admin && id.Tenant == "" {
		return named, nil
	}
	t := auth.TenantFrom(ctx)
	if t == "" {
		if t = first(ctx, auth.TenantKey); t == "" {
			t = auth.DefaultTenant
		} else if !auth.ValidTenant(t) {
			return "", status.Error(codes.InvalidArgument, auth.TenantKey+" must be "+auth.TenantRule)
		}
	}
	if named != "" && named != t {
		return "", status.Errorf(codes.PermissionDenied, "only an admin may name another tenant than the caller's (%s)", t)
	}
	return t, nil
}

// Submit implements detour.v1.Jobs.
func (j *Jobs) Submit(ctx context.Context, req *detourv1.SubmitRequest) (*detourv1.Job, error) {
	if id, ok := auth.IdentityFrom(ctx); ok && id.Admin && id.Tenant == "" {
		return nil, status.Errorf(codes.PermissionDenied, "%s is an admin, not a tenant: submit jobs with a tenant's credential", id.Principal)
	}
	tenant, err := j.tenant(ctx, "")
	if err != nil {
		return nil, err
	}
	var v []*errdetails.BadRequest_FieldViolation
	call := req.GetRequest()
	if call == nil {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "request", Description: "request is required"})
	} else {
		for _, f := range badUTF8(call) {
			v = append(v, &errdetails.BadRequest_FieldViolation{Field: "request." + f, Description: "must be valid UTF-8"})
		}
		for _, fv := range validate(call, j.s.limits().requestBytes) {
			fv.Field = "request." + fv.Field
			v = append(v, fv)
		}
	}
	if len(req.GetIdempotencyKey()) > 128 {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "idempotency_key", Description: "at most 128 bytes"})
	}
	if req.NotAfter != nil && !req.GetNotAfter().IsValid() {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: "not_after", Description: "not a valid time"})
	}
	if len(v) > 0 {
		st := status.New(codes.InvalidArgument, excerpt.Clip(describe(v), maxMessageBytes))
		if d, err := st.WithDetails(badRequest(v)); err == nil {
			st = d
		}
		return nil, st.Err()
	}
	if err := auth.CheckModel(ctx, call.GetModel()); err != nil {
		return nil, err
	}
	if !j.s.router.Serves(call.GetModel()) {
		return nil, status.Errorf(codes.NotFound, "no backend serves model %q", excerpt.Clip(call.GetModel(), excerpt.Max))
	}
	s := jobs.Submission{Tenant: tenant, Request: call, Key: req.GetIdempotencyKey(), Class: req.GetClass()}
	if req.NotAfter != nil {
		s.NotAfter = req.GetNotAfter().AsTime()
	}
	job, _, err := j.eng.Submit(ctx, s)
	if err != nil {
		return nil, j.jobStatus(err)
	}
	return job, nil
}

// Get implements detour.v1.Jobs.
func (j *Jobs) Get(ctx context.Context, req *detourv1.GetJobRequest) (*detourv1.Job, error) {
	tenant, err := j.tenant(ctx, req.GetTenant())
	if err != nil {
		return nil, err
	}
	job, err := j.eng.Get(ctx, tenant, req.GetId())
	if err != nil {
		return nil, j.jobStatus(err)
	}
	return job, nil
}

// Cancel implements detour.v1.Jobs.
func (j *Jobs) Cancel(ctx context.Context, req *detourv1.CancelJobRequest) (*detourv1.Job, error) {
	tenant, err := j.tenant(ctx, req.GetTenant())
	if err != nil {
		return nil, err
	}
	job, err := j.eng.Cancel(ctx, tenant, req.GetId())
	if err != nil {
		return nil, j.jobStatus(err)
	}
	return job, nil
}

// Watch implements detour.v1.Jobs. It has no default deadline (see
// streamGuard): it lasts until the job is final or the caller goes.
func (j *Jobs) Watch(req *detourv1.WatchJobRequest, stream grpc.ServerStreamingServer[detourv1.Job]) error {
	ctx := stream.Context()
	tenant, err := j.tenant(ctx, req.GetTenant())
	if err != nil {
		return err
	}
	if err := j.eng.Watch(ctx, tenant, req.GetId(), stream.Send); err != nil {
		return j.s.cutOr(j.jobStatus(err))
	}
	return nil
}

// List implements detour.v1.Jobs.
func (j *Jobs) List(ctx context.Context, req *detourv1.ListJobsRequest) (*detourv1.ListJobsResponse, error) {
	tenant, err := j.tenant(ctx, req.GetTenant())
	if err != nil {
		return nil, err
	}
	if req.GetPageSize() < 0 {
		return nil, status.Error(codes.InvalidArgument, "page_size must be >= 0")
	}
	for _, s := range req.GetStates() {
		if _, ok := detourv1.JobState_name[int32(s)]; !ok || s == detourv1.JobState_JOB_STATE_UNSPECIFIED {
			return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("states: %d is not a job state", s))
		}
	}
	p, err := j.eng.List(ctx, tenant, req.GetStates(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, j.jobStatus(err)
	}
	return &detourv1.ListJobsResponse{Jobs: p.Jobs, NextPageToken: p.Next}, nil
}
