package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
	"github.com/detour-dev/detour/router"
)

// ConfigSource is the live config store behind an Admin; *etcd.Watcher
// implements it.
type ConfigSource interface {
	// LastRejection returns the last document refused, or nil.
	LastRejection() *etcd.Rejection
	// SetDrained drains or undrains backend on every replica and returns once
	// this instance applied it.
	SetDrained(ctx context.Context, backend string, drained bool, note string) error
}

var _ ConfigSource = (*etcd.Watcher)(nil)

// AdminOptions configure an Admin. The zero value serves an instance whose
// config comes from a file.
type AdminOptions struct {
	// Region and Zone are this instance's, as Status reports them.
	Region, Zone string
	// Config, when set, makes Drain and Undrain cluster-wide and durable:
	// they write etcd's drain keys, which every replica applies. Nil means
	// they change this instance only, until its next config apply (a file
	// config never reapplies).
	Config ConfigSource
	// DrainTimeout bounds a Drain or Undrain whose caller set no deadline.
	// Zero means 10s.
	DrainTimeout time.Duration
	// Logger receives drains and errors. Nil uses slog.Default().
	Logger *slog.Logger
	// SharedState reports the health of the Redis the replicas share
	// (sharedstate.go). Nil means no Redis: Status has no shared_state.
	SharedState SharedStateSource
}

// Admin implements detour.v1.Admin over a router. It is safe for concurrent
// use; Drain and Undrain block until the change is applied on this instance
// or the call's deadline.
//
// Admin does no authentication of its own: serve it on a listener only
// admins reach (see NewAdminServer), or behind the server's auth.
type Admin struct {
	detourv1.UnimplementedAdminServer
	rt   *router.Router
	opts AdminOptions
	log  *slog.Logger
}

// NewAdmin returns the Admin service of the instance routing through rt.
func NewAdmin(rt *router.Router, opts AdminOptions) *Admin {
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	a := &Admin{rt: rt, opts: opts, log: opts.Logger}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a
}

// Register adds the Admin service to s (the Router's server, or the one of
// NewAdminServer).
func (a *Admin) Register(s grpc.ServiceRegistrar) { detourv1.RegisterAdminServer(s, a) }

// NewAdminServer returns a gRPC server with only the Admin service, health
// and reflection, for a listener apart from the Router's (`detour serve
// --admin-listen`).
func NewAdminServer(a *Admin, opts ...grpc.ServerOption) *grpc.Server {
	s := grpc.NewServer(opts...)
	a.Register(s)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	hs.SetServingStatus(detourv1.Admin_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	reflection.Register(s)
	return s
}

// ConfigHealthService is the grpc.health.v1 service name that says whether
// the applied config is live: SERVING when it came from etcd (or from a
// file), NOT_SERVING while the instance serves its last-known-good file
// because etcd could not be read. The Router service stays SERVING either
// way: a stale config routes better than none.
const ConfigHealthService = "detour.config"

// SetConfigLive sets the health status of ConfigHealthService.
func (s *Server) SetConfigLive(live bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if live {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(ConfigHealthService, st)
}

// Status implements detour.v1.Admin.
func (a *Admin) Status(ctx context.Context, _ *detourv1.StatusRequest) (*detourv1.StatusResponse, error) {
	snap := a.rt.Snapshot()
	resp := &detourv1.StatusResponse{
		ConfigRevision: snap.Revision,
		ConfigSource:   snap.Source,
		Region:         a.opts.Region,
		Zone:           a.opts.Zone,
	}
	if !snap.AppliedAt.IsZero() {
		resp.AppliedAt = timestamppb.New(snap.AppliedAt)
	}
	if a.opts.Config != nil {
		if r := a.opts.Config.LastRejection(); r != nil {
			resp.LastRejection = &detourv1.Rejection{Revision: r.Revision, At: timestamppb.New(r.At), Reasons: r.Reasons}
		}
	}
	budget := a.rt.Budget()
	resp.RetryBudget = &detourv1.RetryBudget{Spent: budget.Spent, Allowed: budget.Allowed}
	for _, b := range a.rt.Backends() {
		c := b.Capacity
		bs := &detourv1.BackendStatus{
			Name:         b.Name,
			Region:       b.Region,
			Zone:         b.Zone,
			Kind:         b.Kind,
			Drained:      b.Drained,
			BreakerState: b.Breaker.String(),
			InFlight:     b.InFlight,
			Fallback:     b.Fallback,
			Capacity: &detourv1.Capacity{
				Limit: int64(c.Limit), InFlight: int64(c.InFlight), Held: int64(c.Held), Queued: int64(c.Queued),
				BusyShare: c.BusyShare, BusyFloor: c.Floor, State: c.State.String(),
			},
			SharedCooldown: b.SharedCooldown,
		}
		if !b.OpenUntil.IsZero() {
			bs.OpenUntil = timestamppb.New(b.OpenUntil)
		}
		resp.Backends = append(resp.Backends, bs)
	}
	if a.opts.SharedState != nil {
		resp.SharedState = sharedStateStatus(a.opts.SharedState.Health())
	}
	return resp, nil
}

// ResetBreaker implements detour.v1.Admin.
func (a *Admin) ResetBreaker(ctx context.Context, req *detourv1.ResetBreakerRequest) (*detourv1.ResetBreakerResponse, error) {
	name := req.GetBackend()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "backend: a backend name is required")
	}
	was, err := a.rt.ResetBreaker(name)
	if err != nil {
		return nil, adminStatus(a.log, "reset breaker of", name, err)
	}
	a.log.Info("breaker reset", "backend", name, "was_open", was, "by", drainNote(ctx, "reset"))
	return &detourv1.ResetBreakerResponse{WasOpen: was}, nil
}

// Drain implements detour.v1.Admin.
func (a *Admin) Drain(ctx context.Context, req *detourv1.DrainRequest) (*detourv1.DrainResponse, error) {
	if err := a.setDrained(ctx, req.GetBackend(), true); err != nil {
		return nil, err
	}
	return &detourv1.DrainResponse{}, nil
}

// Undrain implements detour.v1.Admin.
func (a *Admin) Undrain(ctx context.Context, req *detourv1.UndrainRequest) (*detourv1.UndrainResponse, error) {
	if err := a.setDrained(ctx, req.GetBackend(), false); err != nil {
		return nil, err
	}
	return &detourv1.UndrainResponse{}, nil
}

// errLastUsable refuses a drain that would leave no primary to route to.
var errLastUsable = errors.New("it is the last usable primary backend; drain would leave nothing to route to")

func (a *Admin) setDrained(ctx context.Context, name string, drained bool) error {
	verb := map[bool]string{true: "drain", false: "undrain"}[drained]
	if name == "" {
		return status.Error(codes.InvalidArgument, "backend: a backend name is required")
	}
	if err := a.check(name, drained); err != nil {
		return adminStatus(a.log, verb, name, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.opts.DrainTimeout)
		defer cancel()
	}
	var err error
	scope := "this instance"
	if a.opts.Config != nil {
		scope = "every replica"
		err = a.opts.Config.SetDrained(ctx, name, drained, drainNote(ctx, verb))
	} else {
		err = a.rt.SetDrained(name, drained)
	}
	if err != nil {
		return adminStatus(a.log, verb, name, err)
	}
	a.log.Info("backend "+verb+"ed", "backend", name, "scope", scope)
	return nil
}

// check refuses an unknown backend, and draining the last usable primary.
func (a *Admin) check(name string, drained bool) error {
	found, target := false, router.BackendState{}
	usable := 0
	for _, b := range a.rt.Backends() {
		if b.Name == name {
			found, target = true, b
			continue
		}
		if !b.Fallback && !b.Drained {
			usable++
		}
	}
	switch {
	case !found:
		return fmt.Errorf("%w %q", router.ErrUnknownBackend, name)
	case drained && !target.Fallback && !target.Drained && usable == 0:
		return errLastUsable
	}
	return nil
}

func drainNote(ctx context.Context, verb string) string {
	from := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	return fmt.Sprintf("%sed through detour.v1.Admin from %s at %s", verb, from, time.Now().UTC().Format(time.RFC3339))
}

// adminCodes is the one table from Admin failures to gRPC codes.
var adminCodes = []struct {
	err  error
	code codes.Code
}{
	{router.ErrUnknownBackend, codes.NotFound},
	{errLastUsable, codes.FailedPrecondition},
	{regions.ErrInvalid, codes.FailedPrecondition},
	{etcd.ErrDrainedByDocument, codes.FailedPrecondition},
	{etcd.ErrNotConnected, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

func adminStatus(log *slog.Logger, verb, backend string, err error) error {
	backend = excerpt.Clip(backend, 128) // the caller's, and in err too
	for _, e := range adminCodes {
		if errors.Is(err, e.err) {
			return status.Errorf(e.code, "%s %s: %s", verb, backend, excerpt.Clip(err.Error(), maxMessageBytes))
		}
	}
	// An etcd failure: the detail (endpoints, etcd's words) goes to the log.
	log.Error("admin "+verb+" failed", "backend", backend, "err", err)
	return status.Errorf(codes.Unavailable, "%s %s: the config store is unavailable; see detour's log", verb, backend)
}
