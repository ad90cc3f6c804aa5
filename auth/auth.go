package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// Metadata keys and names the package reads and writes.
const (
	// TenantKey is the incoming metadata key that names the tenant when
	// authentication is off. With authentication on it is not trusted: the
	// interceptors overwrite it with the authenticated tenant.
	TenantKey = "x-detour-tenant"
	// DefaultTenant is the tenant of a call that names none, with
	// authentication off.
	DefaultTenant = "default"
	// MaxTenantLen bounds a tenant name taken from metadata.
	MaxTenantLen = 64
	// TenantRule says which names ValidTenant accepts, for the messages
	// that refuse one.
	TenantRule = "1..64 characters of [A-Za-z0-9._-] starting with a letter or digit"
	// maxTokenLen bounds a presented bearer token; longer ones are refused
	// before hashing.
	maxTokenLen      = 4096
	authorizationKey = "authorization"
)

// Mode says which credentials identify a caller. It is a plain value; it
// implements encoding.TextUnmarshaler for flag.TextVar.
type Mode int

// Modes.
const (
	// ModeOff authenticates nobody: the tenant comes from x-detour-tenant
	// metadata (or is "default"), and the Admin service answers loopback
	// callers only. For local use.
	ModeOff Mode = iota
	// ModeTLS identifies callers by their verified client certificate only.
	ModeTLS
	// ModeToken identifies callers by bearer token only.
	ModeToken
	// ModeAny uses the bearer token when the call carries one, else the
	// verified client certificate.
	ModeAny
)

var modeNames = [...]string{ModeOff: "off", ModeTLS: "tls", ModeToken: "token", ModeAny: "any"}

// String returns the flag spelling of m: "off", "tls", "token" or "any".
func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return fmt.Sprintf("Mode(%d)", int(m))
	}
	return modeNames[m]
}

// ParseMode parses "off", "tls", "token" or "any".
func ParseMode(s string) (Mode, error) {
	for m, name := range modeNames {
		if s == name {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("auth mode %q: want off, tls, token or any", s)
}

// MarshalText implements encoding.TextMarshaler (flag.TextVar, JSON).
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

func (m Mode) tokens() bool { return m == ModeToken || m == ModeAny }
func (m Mode) certs() bool  { return m == ModeTLS || m == ModeAny }

// Identity is who made a call, as the interceptors resolved it. It is a plain
// value that holds no secret and is safe to log; do not modify Models, which
// is shared with the config.
type Identity struct {
	// Principal is the caller's name in the config (a tenant's or an
	// admin's). With authentication off it is the tenant, or "anonymous" for
	// an Admin call.
	Principal string
	// Tenant is the tenant the call counts against; "" for an admin.
	Tenant string
	// Admin is true for a principal listed in Config.Admins (or, with
	// authentication off, a loopback Admin caller).
	Admin bool
	// Credential says how the caller was identified, without the secret:
	// "spiffe://...", "CN=...", "token sha256:1a2b3c4d" (the first 8 hex
	// digits of the token's digest, as in the config), "metadata", "none" or
	// "loopback".
	Credential string
	// Models the tenant may call; empty means every model.
	Models []string
}

// LogValue implements slog.LogValuer.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("principal", id.Principal),
		slog.String("tenant", id.Tenant),
		slog.Bool("admin", id.Admin),
		slog.String("credential", id.Credential),
	)
}

type identityKey struct{}

// NewContext returns ctx carrying id, as the interceptors do. Tests of other
// packages use it to stand in for an authenticated call.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity the interceptors put in ctx.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// TenantFrom returns the tenant the call counts against (its quota, log
// line and metrics), or "" when ctx carries no identity or the caller is an
// admin.
func TenantFrom(ctx context.Context) string {
	id, _ := IdentityFrom(ctx)
	return id.Tenant
}

// WithTenant returns ctx carrying tenant as the tenant the call counts
// against, for a call no interceptor resolved (a server without them, a
// test): the identity in ctx, if any, keeps its principal and credential
// and takes tenant as its Tenant; without one, ctx carries
// Identity{Principal: tenant, Tenant: tenant}. The caller checks the name
// (ValidTenant).
func WithTenant(ctx context.Context, tenant string) context.Context {
	id, ok := IdentityFrom(ctx)
	if !ok {
		id.Principal = tenant
	}
	id.Tenant = tenant
	return NewContext(ctx, id)
}

// ValidTenant reports whether name may be a tenant's name: TenantRule,
// because the name becomes a quota key, a log field and a metric label.
// It is the one rule for a tenant named in metadata, whoever reads it.
func ValidTenant(name string) bool {
	if len(name) == 0 || len(name) > MaxTenantLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// CheckModel returns a PERMISSION_DENIED status error when the identity in
// ctx may not call model, and nil otherwise: when ctx carries no identity,
// when the tenant has no allow-list, or when model is empty (validation
// reports that). The interceptors already call it for every request with a
// model field; call it again only where the model changes.
func CheckModel(ctx context.Context, model string) error {
	id, ok := IdentityFrom(ctx)
	if !ok {
		return nil
	}
	return checkModel(id, model)
}

func checkModel(id Identity, model string) error {
	if model == "" || len(id.Models) == 0 {
		return nil
	}
	for _, m := range id.Models {
		if m == model {
			return nil
		}
	}
	// The model is the caller's: quoted only as a short excerpt.
	return status.Errorf(codes.PermissionDenied, "tenant %s may not call model %q", id.Tenant, excerpt.Clip(model, 128))
}

// Options configure an Authenticator.
type Options struct {
	// Mode says which credentials identify a caller. The zero value is
	// ModeOff.
	Mode Mode
	// Config returns the live config, whose Tenants and Admins are the known
	// principals. It is called once per call and must be cheap and safe for
	// concurrent use (an atomic load of the current snapshot); the returned
	// Config must not be modified. Required unless Mode is ModeOff. A nil
	// Config knows no principals.
	Config func() *regions.Config
	// Logger receives the admin audit log and refusals. Nil uses
	// slog.Default().
	Logger *slog.Logger
	// Public lists methods that need no credential: full method names
	// ("/pkg.Service/Method") or service prefixes ending in "/". Nil means
	// the gRPC health service only, so that probes work.
	Public []string
	// PlaintextTokens accepts bearer tokens on connections without TLS from
	// any peer. Zero accepts them without TLS only from loopback peers (a
	// local client, a service-mesh sidecar that terminated TLS) and refuses
	// them elsewhere, since the token would have crossed the network in the
	// clear.
	PlaintextTokens bool
}

// DefaultPublic are the methods that need no credential when Options.Public
// is nil.
var DefaultPublic = []string{"/grpc.health.v1.Health/"}

// Authenticator resolves the identity of each call and enforces who may call
// what. It is safe for concurrent use; it starts no goroutine and does not
// block.
//
// What a call needs depends on its service:
//   - detour.v1.Router: a tenant. The tenant's model allow-list is checked
//     against the request's model field.
//   - detour.v1.Admin: an admin (Config.Admins). Every admin call is logged
//     with its principal and outcome.
//   - Options.Public (the health service): nothing.
//   - any other service (reflection): any known principal.
//
// A call without a credential, or with a malformed or unknown token, gets
// UNAUTHENTICATED. A valid credential of a principal that may not call the
// method gets PERMISSION_DENIED. Messages on the wire never contain a token.
type Authenticator struct {
	mode            Mode
	config          func() *regions.Config
	log             *slog.Logger
	public          []string
	plaintextTokens bool
	idx             atomic.Pointer[index]
}

// New returns an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Mode < ModeOff || opts.Mode > ModeAny {
		return nil, fmt.Errorf("auth: unknown mode %d", int(opts.Mode))
	}
	if opts.Mode != ModeOff && opts.Config == nil {
		return nil, fmt.Errorf("auth: mode %s needs Options.Config", opts.Mode)
	}
	a := &Authenticator{
		mode:            opts.Mode,
		config:          opts.Config,
		log:             opts.Logger,
		public:          opts.Public,
		plaintextTokens: opts.PlaintextTokens,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.public == nil {
		a.public = DefaultPublic
	}
	return a, nil
}

// Mode returns the authenticator's mode.
func (a *Authenticator) Mode() Mode { return a.mode }

// service is what a method needs.
type service int

const (
	servicePublic service = iota
	serviceRouter
	serviceAdmin
	serviceOther
)

var (
	routerPrefix = "/" + detourv1.Router_ServiceDesc.ServiceName + "/"
	adminPrefix  = "/" + detourv1.Admin_ServiceDesc.ServiceName + "/"
)

func (a *Authenticator) classify(method string) service {
	switch {
	case strings.HasPrefix(method, routerPrefix):
		return serviceRouter
	case strings.HasPrefix(method, adminPrefix):
		return serviceAdmin
	}
	for _, p := range a.public {
		if method == p || (strings.HasSuffix(p, "/") && strings.HasPrefix(method, p)) {
			return servicePublic
		}
	}
	return serviceOther
}

// Authenticate resolves the identity of a call to method from ctx (its peer
// and incoming metadata) and checks that it may call method. It reports
// false, with a nil error, for a public method. The error is a gRPC status
// error; with PERMISSION_DENIED the Identity names the principal that was
// refused. The interceptors call it; it is exported for other transports and
// tests.
func (a *Authenticator) Authenticate(ctx context.Context, method string) (Identity, bool, error) {
	svc := a.classify(method)
	if svc == servicePublic {
		return Identity{}, false, nil
	}
	if a.mode == ModeOff {
		return a.anonymous(ctx, svc)
	}
	p, cred, err := a.credential(ctx)
	if err != nil {
		return Identity{}, false, err
	}
	id := Identity{Principal: p.name, Admin: p.admin, Credential: cred}
	if !p.admin {
		id.Tenant, id.Models = p.name, p.models
	}
	switch {
	case svc == serviceRouter && p.admin:
		return id, false, status.Errorf(codes.PermissionDenied, "%s is an admin, not a tenant: call the Router with a tenant's credential", p.name)
	case svc == serviceAdmin && !p.admin:
		return id, false, status.Errorf(codes.PermissionDenied, "%s is not an admin", p.name)
	}
	return id, true, nil
}

// anonymous resolves a call with authentication off.
func (a *Authenticator) anonymous(ctx context.Context, svc service) (Identity, bool, error) {
	if svc == serviceAdmin {
		if !loopbackPeer(ctx) {
			return Identity{}, false, status.Error(codes.PermissionDenied, "the Admin service answers only loopback callers while authentication is off")
		}
		return Identity{Principal: "anonymous", Admin: true, Credential: "loopback"}, true, nil
	}
	vals := metadata.ValueFromIncomingContext(ctx, TenantKey)
	tenant, err := tenantFromMetadata(vals)
	if err != nil {
		return Identity{}, false, err
	}
	cred := "none"
	if len(vals) > 0 {
		cred = "metadata"
	}
	return Identity{Principal: tenant, Tenant: tenant, Credential: cred}, true, nil
}

// tenantFromMetadata returns the tenant named by x-detour-tenant, or
// "default"; a name must pass ValidTenant.
func tenantFromMetadata(vals []string) (string, error) {
	switch {
	case len(vals) == 0 || (len(vals) == 1 && vals[0] == ""):
		return DefaultTenant, nil
	case len(vals) > 1:
		return "", status.Errorf(codes.InvalidArgument, "%s: give one value, not %d", TenantKey, len(vals))
	}
	if !ValidTenant(vals[0]) {
		return "", status.Error(codes.InvalidArgument, TenantKey+" must be "+TenantRule)
	}
	return vals[0], nil
}

// credential finds the principal behind the call's credential. A bearer
// token, when the mode accepts tokens and the call carries one, wins over the
// connection's certificate: it is the more specific credential, and a bad
// token fails the call rather than falling back.
func (a *Authenticator) credential(ctx context.Context) (*principal, string, error) {
	idx := a.index()
	if a.mode.tokens() {
		if vals := metadata.ValueFromIncomingContext(ctx, authorizationKey); len(vals) > 0 {
			return a.token(ctx, idx, vals)
		}
	}
	if a.mode.certs() {
		if ident, ok := certIdentity(ctx); ok {
			p := idx.identities[ident]
			if p == nil {
				return nil, "", status.Errorf(codes.PermissionDenied, "certificate identity %q is not a known principal", ident)
			}
			return p, ident, nil
		}
	}
	switch a.mode {
	case ModeTLS:
		return nil, "", status.Error(codes.Unauthenticated, "no verified client certificate")
	case ModeToken:
		return nil, "", status.Error(codes.Unauthenticated, `no credentials: send "authorization: Bearer <token>" metadata`)
	default:
		return nil, "", status.Error(codes.Unauthenticated, `no credentials: present a client certificate or send "authorization: Bearer <token>" metadata`)
	}
}

// token checks a bearer token. The presented token is hashed and the digest
// looked up among the configured digests: nothing compares the secret
// itself, and what a lookup's timing could reveal is about a SHA-256 digest
// of the attacker's own input, which gives no path to a configured token.
func (a *Authenticator) token(ctx context.Context, idx *index, vals []string) (*principal, string, error) {
	if len(vals) != 1 {
		return nil, "", status.Error(codes.Unauthenticated, "more than one authorization value")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" || len(tok) > maxTokenLen {
		return nil, "", status.Error(codes.Unauthenticated, `malformed authorization metadata: want "Bearer <token>"`)
	}
	if !a.plaintextTokens && !tlsPeer(ctx) && !loopbackPeer(ctx) {
		return nil, "", status.Error(codes.Unauthenticated, "bearer tokens are accepted only over TLS")
	}
	sum := sha256.Sum256([]byte(tok))
	cred := "token sha256:" + hex.EncodeToString(sum[:4])
	p := idx.tokens[sum]
	if p == nil {
		return nil, cred, status.Error(codes.Unauthenticated, "invalid bearer token")
	}
	return p, cred, nil
}

// certIdentity returns the identity in the call's verified client
// certificate: its first URI SAN (a SPIFFE ID), else "CN=" and its common
// name. A certificate the TLS stack did not verify is never used.
func certIdentity(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) > 0 {
		return leaf.URIs[0].String(), true
	}
	if leaf.Subject.CommonName != "" {
		return "CN=" + leaf.Subject.CommonName, true
	}
	return "", false
}

func tlsPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	_, ok = p.AuthInfo.(credentials.TLSInfo)
	return ok
}

func loopbackPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	switch addr := p.Addr.(type) {
	case *net.TCPAddr:
		return addr.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// principal is a tenant or admin from the config.
type principal struct {
	name   string
	admin  bool
	models []string
}

// index maps credentials to principals for one config document. It is
// immutable once built.
type index struct {
	cfg        *regions.Config
	tokens     map[[sha256.Size]byte]*principal
	identities map[string]*principal
}

// index returns the index of the current config, rebuilding it when the
// config changed. Concurrent rebuilds are harmless: they build equal values.
func (a *Authenticator) index() *index {
	var cfg *regions.Config
	if a.config != nil {
		cfg = a.config()
	}
	if idx := a.idx.Load(); idx != nil && idx.cfg == cfg {
		return idx
	}
	idx := newIndex(cfg)
	a.idx.Store(idx)
	return idx
}

func newIndex(cfg *regions.Config) *index {
	idx := &index{cfg: cfg, tokens: map[[sha256.Size]byte]*principal{}, identities: map[string]*principal{}}
	if cfg == nil {
		return idx
	}
	add := func(pr regions.Principal, p *principal) {
		for _, id := range pr.Identities {
			idx.identities[id] = p
		}
		for _, h := range pr.TokenSHA256 {
			var sum [sha256.Size]byte
			if b, err := hex.DecodeString(h); err == nil && len(b) == len(sum) {
				copy(sum[:], b)
				idx.tokens[sum] = p
			}
		}
	}
	for _, t := range cfg.Tenants {
		add(t.Principal, &principal{name: t.Name, models: t.Models})
	}
	for _, ad := range cfg.Admins {
		add(ad, &principal{name: ad.Name, admin: true})
	}
	return idx
}

// UnaryInterceptor authenticates and authorizes each unary call, checks the
// model allow-list of requests with a model field, puts the Identity in the
// handler's context, and logs every Admin call. In the handler's incoming
// metadata, x-detour-tenant is absent or holds the resolved tenant (never
// a caller's other claim) and authorization is removed; read the tenant with
// TenantFrom. Chain it after the server's panic and deadline guard and before
// anything that reads the tenant.
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, ok, err := a.Authenticate(ctx, info.FullMethod)
		if err != nil {
			a.refused(ctx, info.FullMethod, id, err)
			return nil, err
		}
		if !ok {
			return h(ctx, req)
		}
		if m, ok := req.(interface{ GetModel() string }); ok {
			if err := checkModel(id, m.GetModel()); err != nil {
				a.refused(ctx, info.FullMethod, id, err)
				return nil, err
			}
		}
		ctx = withIdentity(ctx, id)
		if a.classify(info.FullMethod) != serviceAdmin {
			return h(ctx, req)
		}
		done := false
		defer func() { a.audit(ctx, info.FullMethod, id, req, err, done) }()
		resp, err := h(ctx, req)
		done = true
		return resp, err
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls. The model
// allow-list is checked on each received message with a model field.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		ctx := ss.Context()
		id, ok, err := a.Authenticate(ctx, info.FullMethod)
		if err != nil {
			a.refused(ctx, info.FullMethod, id, err)
			return err
		}
		if !ok {
			return h(srv, ss)
		}
		ws := &stream{ServerStream: ss, ctx: withIdentity(ctx, id), a: a, id: id, method: info.FullMethod}
		if a.classify(info.FullMethod) != serviceAdmin {
			return h(srv, ws)
		}
		done := false
		defer func() { a.audit(ws.ctx, info.FullMethod, id, nil, err, done) }()
		err = h(srv, ws)
		done = true
		return err
	}
}

// withIdentity puts id in ctx and rewrites the incoming metadata so that
// handlers never see a caller's claim of another tenant, nor the caller's
// token. Metadata that needs no rewrite (no token, and no tenant or the
// resolved one) is left as it is: copying it costs more than the rest of
// the interceptor.
func withIdentity(ctx context.Context, id Identity) context.Context {
	if len(metadata.ValueFromIncomingContext(ctx, authorizationKey)) == 0 &&
		tenantAgrees(metadata.ValueFromIncomingContext(ctx, TenantKey), id.Tenant) {
		return NewContext(ctx, id) // nothing to rewrite: spare copying the metadata
	}
	md, ok := metadata.FromIncomingContext(ctx) // a copy
	if !ok {
		md = metadata.MD{}
	}
	md.Delete(authorizationKey)
	if id.Tenant != "" {
		md.Set(TenantKey, id.Tenant)
	} else {
		md.Delete(TenantKey)
	}
	return NewContext(metadata.NewIncomingContext(ctx, md), id)
}

// tenantAgrees reports whether the x-detour-tenant values v may stay as
// they are for a call resolved to tenant: absent, or exactly tenant.
func tenantAgrees(v []string, tenant string) bool {
	return len(v) == 0 || (tenant != "" && len(v) == 1 && v[0] == tenant)
}

type stream struct {
	grpc.ServerStream
	ctx    context.Context
	a      *Authenticator
	id     Identity
	method string
}

func (s *stream) Context() context.Context { return s.ctx }

func (s *stream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if r, ok := m.(interface{ GetModel() string }); ok {
		if err := checkModel(s.id, r.GetModel()); err != nil {
			s.a.refused(s.ctx, s.method, s.id, err)
			return err
		}
	}
	return nil
}

// refused logs a refused call: at warning level for the Admin service, at
// debug level elsewhere (a flood of bad calls must not flood the log).
func (a *Authenticator) refused(ctx context.Context, method string, id Identity, err error) {
	lvl := slog.LevelDebug
	if a.classify(method) == serviceAdmin {
		lvl = slog.LevelWarn
	}
	if !a.log.Enabled(ctx, lvl) {
		return
	}
	st, _ := status.FromError(err)
	a.log.Log(ctx, lvl, "call refused", "method", method, "code", st.Code().String(),
		"reason", st.Message(), "principal", id.Principal, "credential", id.Credential, "peer", peerAddr(ctx))
}

// audit logs one Admin call with who made it and how it ended. req is
// logged only through fields known to hold no secret.
func (a *Authenticator) audit(ctx context.Context, method string, id Identity, req any, err error, done bool) {
	attrs := []any{"method", method, "principal", id.Principal, "credential", id.Credential, "peer", peerAddr(ctx)}
	if r, ok := req.(interface{ GetBackend() string }); ok {
		attrs = append(attrs, "backend", r.GetBackend())
	}
	switch {
	case !done:
		attrs = append(attrs, "code", "panic")
	default:
		attrs = append(attrs, "code", status.Code(err).String())
	}
	a.log.InfoContext(ctx, "admin call", attrs...)
}
