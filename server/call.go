package server

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/excerpt"
	"github.com/detour-dev/detour/internal/hop"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/spend"
)

// Metadata keys read from callers (and auth.TenantKey, the caller's tenant
// while authentication is off).
const (
	// RequestIDKey carries the caller's request id, which the call's log
	// line shows; detour makes one when it is absent. With
	// Options.ReturnRequestID the response header carries it back.
	RequestIDKey = "x-request-id"
)

// maxModelBytes bounds the model name in a call log line: room for every
// real name, not for a caller's megabyte.
const maxModelBytes = 128

// callInfo is the bookkeeping of one call: its context for the router, and
// what its log line and metrics need.
type callInfo struct {
	s        *Server
	ctx      context.Context
	err      error // set when the call was refused before routing
	method   string
	streamed bool // a streamed call: its first chunk's latency is recorded
	model    string
	tenant   string
	// routed is the router's own error for a failed call (before it became
	// a status), for the call line.
	routed error
	reqID  string
	start  time.Time
	stats  router.CallStats
}

// begin validates req, resolves the tenant and request id, and prepares the
// router's context.
func (s *Server) begin(ctx context.Context, method string, req *detourv1.CompleteRequest) *callInfo {
	c := &callInfo{s: s, method: method, model: req.GetModel(), start: time.Now()}
	c.reqID = first(ctx, RequestIDKey)
	if c.reqID == "" || len(c.reqID) > 128 {
		c.reqID = newRequestID()
	}
	if s.opts.ReturnRequestID {
		grpc.SetHeader(ctx, metadata.MD{RequestIDKey: []string{c.reqID}})
	}
	var v []*errdetails.BadRequest_FieldViolation
	authenticated := false
	if c.tenant = auth.TenantFrom(ctx); c.tenant != "" {
		// The authentication interceptor resolved (and checked) it.
		authenticated = true
	} else if c.tenant = first(ctx, auth.TenantKey); c.tenant == "" {
		c.tenant = auth.DefaultTenant
	} else if !auth.ValidTenant(c.tenant) {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: auth.TenantKey,
			Description: "tenant must be " + auth.TenantRule})
		c.tenant = "invalid"
	}
	lim := s.limits()
	hops, err := hop.Parse(first(ctx, hop.Key))
	if err != nil {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: hop.Key, Description: hop.Key + " " + err.Error()})
	}
	for _, f := range badUTF8(req) {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: f, Description: "must be valid UTF-8"})
	}
	v = append(v, validate(req, lim.requestBytes)...)
	if len(v) > 0 {
		st := status.New(codes.InvalidArgument, excerpt.Clip(describe(v), maxMessageBytes))
		if d, err := st.WithDetails(badRequest(v)); err == nil {
			st = d
		}
		c.err = st.Err()
		return c
	}
	if hops > lim.maxHops {
		// A routing loop: the detour that sent the call counts this
		// against its backend (breaker.Classify) and tries another.
		c.err = hop.Refusal(hops, lim.maxHops).Err()
		return c
	}
	ctx = hop.With(ctx, hops)
	if !authenticated {
		ctx = auth.WithTenant(ctx, c.tenant)
	}
	c.ctx = router.WithStats(ctx, &c.stats)
	return c
}

// route notes the router's error for the call line and returns it.
func (c *callInfo) route(err error) error {
	c.routed = err
	return err
}

// end records the call's metrics and log line. served, attempts and usage
// come from the answer (nil and 0 for a failed call).
func (c *callInfo) end(source detourv1.Source, served *detourv1.ServedBy, attempts int32, usage *detourv1.Usage, err error) {
	total := time.Since(c.start)
	code := status.Code(err)
	src := sourceLabel(source, err)
	overhead := total - c.stats.Upstream - c.stats.Waited
	if c.stats.Attempts == 0 && attempts > 0 {
		overhead = -1 // a shared (coalesced) upstream call: detour's share is unknown
	}
	region, backend, n := c.stats.Region, c.stats.Backend, c.stats.Attempts
	var re *router.Error
	switch {
	case served != nil:
		region, backend, n = served.GetRegion(), served.GetBackend(), int(attempts)
	case n == 0 && errors.As(c.routed, &re):
		// A failed call whose upstream call was shared (coalesced): its own
		// stats are empty, the error says what the shared call did.
		region, backend, n = re.Region, re.Backend, re.Attempts
	}
	c.s.opts.Metrics.Call(c.method, code.String(), src, total, overhead)
	// The token and spend counters are the router's (package spend): once
	// per upstream call; the call line has the caller's answer's usage.
	tokens := spend.TokensOf(usage)
	if c.streamed && c.stats.FirstChunk > 0 {
		c.s.opts.Metrics.FirstChunk(c.stats.FirstChunk)
	}
	if !c.s.opts.LogCalls {
		return
	}
	l := callLine{
		at:        c.start.Add(total),
		errLevel:  code == codes.Internal || code == codes.Unknown,
		reqID:     c.reqID,
		method:    c.method,
		tenant:    c.tenant,
		model:     excerpt.Clip(c.model, maxModelBytes),
		region:    region,
		backend:   backend,
		attempts:  n,
		source:    src,
		latencyUS: total.Microseconds(),
		code:      code.String(),
		usage:     usage != nil,
		tokens:    tokens,
	}
	if sc := trace.SpanContextFromContext(c.ctxOrBackground()); sc.HasTraceID() {
		l.traceID = sc.TraceID().String()
	}
	if err != nil && code != codes.OK {
		l.errMsg = excerpt.Clip(status.Convert(err).Message(), maxMessageBytes)
	}
	if w := c.s.opts.CallLog; w != nil {
		l.writeTo(w)
		return
	}
	l.log(c.s.log)
}

// log writes l through an slog.Logger (Options.CallLog unset): the same
// line when the logger has a JSON handler.
func (l *callLine) log(lg *slog.Logger) {
	level := slog.LevelInfo
	if l.errLevel {
		level = slog.LevelError
	}
	h := lg.Handler()
	if !h.Enabled(context.Background(), level) {
		return
	}
	// A record made here, with no caller PC, spares Logger.LogAttrs's
	// runtime.Callers walk of this deep stack on every call.
	r := slog.NewRecord(l.at, level, "call", 0)
	r.AddAttrs(
		slog.String("request_id", l.reqID),
		slog.String("method", l.method),
		slog.String("tenant", l.tenant),
		slog.String("model", l.model),
		slog.String("region", l.region),
		slog.String("backend", l.backend),
		slog.Int("attempts", l.attempts),
		slog.String("source", l.source),
		slog.Int64("latency_us", l.latencyUS),
		slog.String("code", l.code),
	)
	if l.usage {
		r.AddAttrs(
			slog.Int64("prompt_tokens", l.tokens.Prompt),
			slog.Int64("completion_tokens", l.tokens.Completion),
			slog.Int64("cache_hit_tokens", l.tokens.CacheHit),
			slog.Int64("reasoning_tokens", l.tokens.Reasoning),
		)
	}
	if l.traceID != "" {
		r.AddAttrs(slog.String("trace_id", l.traceID))
	}
	if l.errMsg != "" {
		r.AddAttrs(slog.String("error", l.errMsg))
	}
	h.Handle(context.Background(), r)
}

func (c *callInfo) ctxOrBackground() context.Context {
	if c.ctx == nil {
		return context.Background()
	}
	return c.ctx
}

func sourceLabel(s detourv1.Source, err error) string {
	if err != nil {
		return "none"
	}
	switch s {
	case detourv1.Source_SOURCE_LIVE:
		return "live"
	case detourv1.Source_SOURCE_CACHE:
		return "cache"
	case detourv1.Source_SOURCE_STALE_CACHE:
		return "stale_cache"
	case detourv1.Source_SOURCE_FALLBACK:
		return "fallback"
	}
	return "none"
}

// first returns the first incoming value of metadata key, trimmed. Unlike
// metadata.FromIncomingContext it copies one value, not the whole map.
func first(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// newRequestID returns 16 random hex digits.
func newRequestID() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], rand.Uint64())
	return hex.EncodeToString(b[:])
}
