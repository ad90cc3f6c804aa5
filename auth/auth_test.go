package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// Test tokens. They are distinctive so that the secrets scan can look for
// them anywhere.
const (
	tokSearch  = "tok-SEARCH-5f2b9c1e7a"
	tokBilling = "tok-BILLING-0d8e4a6c3f"
	tokAdmin   = "tok-ADMIN-b7c1e9f24d"
	tokUnknown = "tok-UNKNOWN-93ae61d0b2"
)

const (
	spiffeSearch = "spiffe://corp/ns/search/sa/api"
	spiffeOncall = "spiffe://corp/ns/ops/sa/oncall"
)

// testConfig has two tenants and an admin, with certificate identities and
// tokens for each.
func testConfig() *regions.Config {
	return &regions.Config{
		Tenants: []regions.Tenant{
			{
				Principal: regions.Principal{Name: "search", Identities: []string{spiffeSearch}, TokenSHA256: []string{TokenSHA256(tokSearch)}},
				Models:    []string{"deepseek-chat"},
			},
			{
				// An upper-case digest is as good as a lower-case one.
				Principal: regions.Principal{Name: "billing", Identities: []string{"CN=billing"}, TokenSHA256: []string{strings.ToUpper(TokenSHA256(tokBilling))}},
			},
		},
		Admins: []regions.Principal{
			{Name: "oncall", Identities: []string{spiffeOncall}, TokenSHA256: []string{TokenSHA256(tokAdmin)}},
		},
	}
}

func static(cfg *regions.Config) func() *regions.Config { return func() *regions.Config { return cfg } }

const (
	routerComplete = "/detour.v1.Router/Complete"
	adminDrain     = "/detour.v1.Admin/Drain"
	healthCheck    = "/grpc.health.v1.Health/Check"
	reflectionInfo = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
)

// callContext builds the server-side context of a call: peer address,
// transport security and incoming metadata. No network is involved.
type callContext struct {
	addr     string            // peer IP; "" means 127.0.0.1
	tls      bool              // connection is TLS
	verified *x509.Certificate // verified client leaf (implies tls)
	peerOnly *x509.Certificate // presented but unverified client leaf
	md       []string          // key, value pairs
}

func (c callContext) build() context.Context {
	ip := c.addr
	if ip == "" {
		ip = "127.0.0.1"
	}
	p := &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
	if c.tls || c.verified != nil || c.peerOnly != nil {
		info := credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
		if c.verified != nil {
			info.State.PeerCertificates = []*x509.Certificate{c.verified}
			info.State.VerifiedChains = [][]*x509.Certificate{{c.verified}}
		}
		if c.peerOnly != nil {
			info.State.PeerCertificates = []*x509.Certificate{c.peerOnly}
		}
		p.AuthInfo = info
	}
	ctx := peer.NewContext(context.Background(), p)
	if len(c.md) > 0 {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(c.md...))
	}
	return ctx
}

func certWith(uri, cn string) *x509.Certificate {
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	if uri != "" {
		u, _ := url.Parse(uri)
		c.URIs = []*url.URL{u}
	}
	return c
}

func bearer(tok string) []string { return []string{"authorization", "Bearer " + tok} }

func TestAuthenticate(t *testing.T) {
	sha := func(tok string) string { return "token sha256:" + TokenSHA256(Secret(tok))[:8] }
	search := Identity{Principal: "search", Tenant: "search", Models: []string{"deepseek-chat"}}
	billing := Identity{Principal: "billing", Tenant: "billing"}
	oncall := Identity{Principal: "oncall", Admin: true}
	with := func(id Identity, cred string) Identity { id.Credential = cred; return id }

	tests := []struct {
		name     string
		mode     Mode
		method   string
		call     callContext
		want     Identity
		wantAuth bool // false: public method, no identity
		wantCode codes.Code
	}{
		// Tokens.
		{name: "token over TLS", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: bearer(tokSearch)}, want: with(search, sha(tokSearch)), wantAuth: true},
		{name: "token upper-case digest in config", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: bearer(tokBilling)}, want: with(billing, sha(tokBilling)), wantAuth: true},
		{name: "scheme is case-insensitive", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: []string{"authorization", "bearer " + tokSearch}}, want: with(search, sha(tokSearch)), wantAuth: true},
		{name: "unknown token", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: bearer(tokUnknown)}, wantCode: codes.Unauthenticated},
		{name: "no credential", mode: ModeToken, method: routerComplete, call: callContext{tls: true}, wantCode: codes.Unauthenticated},
		{name: "basic scheme", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: []string{"authorization", "Basic " + tokSearch}}, wantCode: codes.Unauthenticated},
		{name: "bare token", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: []string{"authorization", tokSearch}}, wantCode: codes.Unauthenticated},
		{name: "empty bearer", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: []string{"authorization", "Bearer "}}, wantCode: codes.Unauthenticated},
		{name: "oversize token", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: bearer(strings.Repeat("x", maxTokenLen+1))}, wantCode: codes.Unauthenticated},
		{name: "two authorization values", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: append(bearer(tokSearch), bearer(tokSearch)...)}, wantCode: codes.Unauthenticated},
		{name: "token in clear from the network", mode: ModeToken, method: routerComplete, call: callContext{addr: "10.1.2.3", md: bearer(tokSearch)}, wantCode: codes.Unauthenticated},
		{name: "token in clear from loopback", mode: ModeToken, method: routerComplete, call: callContext{md: bearer(tokSearch)}, want: with(search, sha(tokSearch)), wantAuth: true},
		{name: "admin token on the Router", mode: ModeToken, method: routerComplete, call: callContext{tls: true, md: bearer(tokAdmin)}, wantCode: codes.PermissionDenied},
		{name: "admin token on Admin", mode: ModeToken, method: adminDrain, call: callContext{tls: true, md: bearer(tokAdmin)}, want: with(oncall, sha(tokAdmin)), wantAuth: true},
		{name: "tenant token on Admin", mode: ModeToken, method: adminDrain, call: callContext{tls: true, md: bearer(tokSearch)}, wantCode: codes.PermissionDenied},
		{name: "unknown token on Admin", mode: ModeToken, method: adminDrain, call: callContext{tls: true, md: bearer(tokUnknown)}, wantCode: codes.Unauthenticated},
		{name: "no credential on Admin", mode: ModeToken, method: adminDrain, call: callContext{tls: true}, wantCode: codes.Unauthenticated},
		{name: "health is public", mode: ModeToken, method: healthCheck, call: callContext{addr: "10.1.2.3"}},
		{name: "reflection needs a principal", mode: ModeToken, method: reflectionInfo, call: callContext{tls: true}, wantCode: codes.Unauthenticated},
		{name: "reflection with a tenant", mode: ModeToken, method: reflectionInfo, call: callContext{tls: true, md: bearer(tokBilling)}, want: with(billing, sha(tokBilling)), wantAuth: true},
		{name: "reflection with an admin", mode: ModeToken, method: reflectionInfo, call: callContext{tls: true, md: bearer(tokAdmin)}, want: with(oncall, sha(tokAdmin)), wantAuth: true},
		{name: "token mode ignores certificates", mode: ModeToken, method: routerComplete, call: callContext{verified: certWith(spiffeSearch, "")}, wantCode: codes.Unauthenticated},

		// Certificates.
		{name: "SPIFFE URI SAN", mode: ModeTLS, method: routerComplete, call: callContext{verified: certWith(spiffeSearch, "ignored")}, want: with(search, spiffeSearch), wantAuth: true},
		{name: "common name", mode: ModeTLS, method: routerComplete, call: callContext{verified: certWith("", "billing")}, want: with(billing, "CN=billing"), wantAuth: true},
		{name: "URI SAN wins over a known CN", mode: ModeTLS, method: routerComplete, call: callContext{verified: certWith("spiffe://corp/ns/x/sa/y", "billing")}, wantCode: codes.PermissionDenied},
		{name: "unknown identity", mode: ModeTLS, method: routerComplete, call: callContext{verified: certWith("", "mallory")}, wantCode: codes.PermissionDenied},
		{name: "unverified certificate", mode: ModeTLS, method: routerComplete, call: callContext{peerOnly: certWith(spiffeSearch, "")}, wantCode: codes.Unauthenticated},
		{name: "no certificate", mode: ModeTLS, method: routerComplete, call: callContext{tls: true}, wantCode: codes.Unauthenticated},
		{name: "tls mode ignores tokens", mode: ModeTLS, method: routerComplete, call: callContext{tls: true, md: bearer(tokSearch)}, wantCode: codes.Unauthenticated},
		{name: "admin certificate on Admin", mode: ModeTLS, method: adminDrain, call: callContext{verified: certWith(spiffeOncall, "")}, want: with(oncall, spiffeOncall), wantAuth: true},
		{name: "tenant certificate on Admin", mode: ModeTLS, method: adminDrain, call: callContext{verified: certWith(spiffeSearch, "")}, wantCode: codes.PermissionDenied},

		// Either.
		{name: "any: certificate", mode: ModeAny, method: routerComplete, call: callContext{verified: certWith(spiffeSearch, "")}, want: with(search, spiffeSearch), wantAuth: true},
		{name: "any: token wins over certificate", mode: ModeAny, method: routerComplete, call: callContext{verified: certWith(spiffeSearch, ""), md: bearer(tokBilling)}, want: with(billing, sha(tokBilling)), wantAuth: true},
		{name: "any: bad token does not fall back", mode: ModeAny, method: routerComplete, call: callContext{verified: certWith(spiffeSearch, ""), md: bearer(tokUnknown)}, wantCode: codes.Unauthenticated},
		{name: "any: nothing", mode: ModeAny, method: routerComplete, call: callContext{tls: true}, wantCode: codes.Unauthenticated},

		// Off.
		{name: "off: default tenant", mode: ModeOff, method: routerComplete, call: callContext{}, want: Identity{Principal: "default", Tenant: "default", Credential: "none"}, wantAuth: true},
		{name: "off: tenant from metadata", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, "team-a.eu_1"}}, want: Identity{Principal: "team-a.eu_1", Tenant: "team-a.eu_1", Credential: "metadata"}, wantAuth: true},
		{name: "off: tokens are ignored", mode: ModeOff, method: routerComplete, call: callContext{md: bearer(tokAdmin)}, want: Identity{Principal: "default", Tenant: "default", Credential: "none"}, wantAuth: true},
		{name: "off: bad tenant characters", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, "a b"}}, wantCode: codes.InvalidArgument},
		{name: "off: tenant starts with a dot", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, ".a"}}, wantCode: codes.InvalidArgument},
		{name: "off: tenant too long", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, strings.Repeat("a", MaxTenantLen+1)}}, wantCode: codes.InvalidArgument},
		{name: "off: longest tenant", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, strings.Repeat("a", MaxTenantLen)}}, want: Identity{Principal: strings.Repeat("a", MaxTenantLen), Tenant: strings.Repeat("a", MaxTenantLen), Credential: "metadata"}, wantAuth: true},
		{name: "off: two tenants", mode: ModeOff, method: routerComplete, call: callContext{md: []string{TenantKey, "a", TenantKey, "b"}}, wantCode: codes.InvalidArgument},
		{name: "off: Admin from loopback", mode: ModeOff, method: adminDrain, call: callContext{}, want: Identity{Principal: "anonymous", Admin: true, Credential: "loopback"}, wantAuth: true},
		{name: "off: Admin from the network", mode: ModeOff, method: adminDrain, call: callContext{addr: "10.1.2.3"}, wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Options{Mode: tt.mode, Config: static(testConfig()), Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := a.Authenticate(tt.call.build(), tt.method)
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err != nil {
				if _, isStatus := status.FromError(err); !isStatus {
					t.Errorf("error %v is not a gRPC status", err)
				}
				return
			}
			if ok != tt.wantAuth {
				t.Errorf("authenticated = %v, want %v", ok, tt.wantAuth)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("identity (-got +want):\n%s", diff)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	for _, o := range []Options{{Mode: ModeToken}, {Mode: Mode(9), Config: static(nil)}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeOff, ModeTLS, ModeToken, ModeAny} {
		var got Mode
		b, _ := m.MarshalText()
		if err := got.UnmarshalText(b); err != nil || got != m {
			t.Errorf("round trip of %v = %v, %v", m, got, err)
		}
	}
	if _, err := ParseMode("mtls"); err == nil {
		t.Error(`ParseMode("mtls") = nil error`)
	}
}

// TestConfigChangesApply checks that a new config document takes effect on
// the next call: a removed token stops working, a new one starts.
func TestConfigChangesApply(t *testing.T) {
	var cur atomic.Pointer[regions.Config]
	cur.Store(testConfig())
	a, err := New(Options{Mode: ModeToken, Config: cur.Load, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := callContext{tls: true, md: bearer(tokSearch)}.build()
	if _, _, err := a.Authenticate(ctx, routerComplete); err != nil {
		t.Fatalf("before the change: %v", err)
	}
	next := testConfig()
	next.Tenants[0].TokenSHA256 = []string{TokenSHA256(tokUnknown)}
	cur.Store(next)
	if _, _, err := a.Authenticate(ctx, routerComplete); status.Code(err) != codes.Unauthenticated {
		t.Errorf("removed token: %v, want Unauthenticated", err)
	}
	if _, _, err := a.Authenticate(callContext{tls: true, md: bearer(tokUnknown)}.build(), routerComplete); err != nil {
		t.Errorf("added token: %v", err)
	}
	cur.Store(nil)
	if _, _, err := a.Authenticate(ctx, routerComplete); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no config: %v, want Unauthenticated", err)
	}
}

// TestTokensOverTLS drives token calls through a real TLS server on
// loopback. The handler must see the resolved tenant, never the caller's
// claim, and never the token.
func TestTokensOverTLS(t *testing.T) {
	ca := newCA(t, "detour test CA")
	srvTLS := newServerTLS(t, ca, nil, -1, false)
	log, _ := newLogger()
	a, err := New(Options{Mode: ModeToken, Config: static(testConfig()), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, srvTLS.Credentials())
	conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, nil))))
	rc := detourv1.NewRouterClient(conn)

	tests := []struct {
		name     string
		md       []string
		want     string
		wantCode codes.Code
	}{
		{name: "search", md: bearer(tokSearch), want: "search|search|search|"},
		{name: "billing", md: bearer(tokBilling), want: "billing|billing|billing|"},
		{name: "claimed tenant is overwritten", md: append(bearer(tokSearch), TenantKey, "billing"), want: "search|search|search|"},
		{name: "unknown token", md: bearer(tokUnknown), wantCode: codes.Unauthenticated},
		{name: "no token", wantCode: codes.Unauthenticated},
		{name: "no token, claimed tenant", md: []string{TenantKey, "billing"}, wantCode: codes.Unauthenticated},
		{name: "admin token", md: bearer(tokAdmin), wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(tt.md...))
			resp, err := rc.Complete(ctx, request("deepseek-chat"))
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("Complete code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err == nil {
				if diff := cmp.Diff(resp.GetContent(), tt.want); diff != "" {
					t.Errorf("caller seen by the handler (-got +want):\n%s", diff)
				}
			}
			st, err := rc.StreamComplete(ctx, request("deepseek-chat"))
			var chunk *detourv1.CompleteChunk
			if err == nil {
				chunk, err = st.Recv()
			}
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("StreamComplete code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err == nil && chunk.GetDelta() != tt.want {
				t.Errorf("stream caller = %q, want %q", chunk.GetDelta(), tt.want)
			}
		})
	}

	// Bearer as per-call credentials does the same as raw metadata.
	bconn := dial(t, addr,
		grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, nil))),
		grpc.WithPerRPCCredentials(Bearer{Token: tokBilling}))
	resp, err := detourv1.NewRouterClient(bconn).Complete(callCtx(t), request("m"))
	if err != nil || resp.GetContent() != "billing|billing|billing|" {
		t.Errorf("with Bearer: %q, %v", resp.GetContent(), err)
	}
}

// TestModelAllowList checks the tenant's models on unary and streaming calls.
func TestModelAllowList(t *testing.T) {
	a, err := New(Options{Mode: ModeToken, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, nil) // plaintext on loopback: tokens allowed
	rc := detourv1.NewRouterClient(dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials())))
	tests := []struct {
		name     string
		tok      string
		model    string
		wantCode codes.Code
	}{
		{name: "allowed model", tok: tokSearch, model: "deepseek-chat"},
		{name: "other model", tok: tokSearch, model: "deepseek-reasoner", wantCode: codes.PermissionDenied},
		{name: "no model is validation's business", tok: tokSearch, model: ""},
		{name: "tenant without a list", tok: tokBilling, model: "deepseek-reasoner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(bearer(tt.tok)...))
			_, err := rc.Complete(ctx, request(tt.model))
			if code := status.Code(err); code != tt.wantCode {
				t.Errorf("Complete code = %v (%v), want %v", code, err, tt.wantCode)
			}
			st, err := rc.StreamComplete(ctx, request(tt.model))
			if err == nil {
				_, err = st.Recv()
			}
			if code := status.Code(err); code != tt.wantCode {
				t.Errorf("StreamComplete code = %v (%v), want %v", code, err, tt.wantCode)
			}
		})
	}
}

func TestCheckModel(t *testing.T) {
	if err := CheckModel(context.Background(), "x"); err != nil {
		t.Errorf("no identity: %v", err)
	}
	ctx := NewContext(context.Background(), Identity{Tenant: "search", Models: []string{"a"}})
	if err := CheckModel(ctx, "a"); err != nil {
		t.Errorf("allowed: %v", err)
	}
	if err := CheckModel(ctx, "b"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("not allowed: %v", err)
	}
	if got := TenantFrom(ctx); got != "search" {
		t.Errorf("TenantFrom = %q, want search", got)
	}
	if got := TenantFrom(NewContext(context.Background(), Identity{Principal: "oncall", Admin: true})); got != "" {
		t.Error("TenantFrom(admin) reported a tenant")
	}
}

func TestValidTenant(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"team-a.eu_1", true},
		{"a", true},
		{"A9", true},
		{strings.Repeat("a", MaxTenantLen), true},
		{"", false},
		{strings.Repeat("a", MaxTenantLen+1), false},
		{".a", false},
		{"-a", false},
		{"_a", false},
		{"a b", false},
		{"a/b", false},
		{"é", false},
	}
	for _, tt := range tests {
		if got := ValidTenant(tt.name); got != tt.want {
			t.Errorf("ValidTenant(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if !strings.Contains(TenantRule, "1.."+strconv.Itoa(MaxTenantLen)+" ") {
		t.Errorf("TenantRule %q does not say MaxTenantLen (%d)", TenantRule, MaxTenantLen)
	}
}

func TestWithTenant(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want Identity
	}{
		{name: "no identity", ctx: context.Background(), want: Identity{Principal: "search", Tenant: "search"}},
		{name: "an identity keeps its principal", ctx: NewContext(context.Background(), Identity{Principal: "svc", Tenant: "old", Credential: "CN=svc"}),
			want: Identity{Principal: "svc", Tenant: "search", Credential: "CN=svc"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := WithTenant(tt.ctx, "search")
			got, ok := IdentityFrom(ctx)
			if diff := cmp.Diff(got, tt.want); !ok || diff != "" {
				t.Errorf("identity (-got +want):\n%s", diff)
			}
			if got := TenantFrom(ctx); got != "search" {
				t.Errorf("TenantFrom = %q, want search", got)
			}
		})
	}
	if got := TenantFrom(context.Background()); got != "" {
		t.Errorf("TenantFrom(no identity) = %q, want \"\"", got)
	}
}

// TestAdminAuthorization checks that only admins reach Admin.Drain, and that
// every admin call is logged with who made it.
func TestAdminAuthorization(t *testing.T) {
	ca := newCA(t, "detour test CA")
	srvTLS := newServerTLS(t, ca, ca, -1, true)
	log, logs := newLogger()
	a, err := New(Options{Mode: ModeAny, Config: static(testConfig()), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	addr, admin := serveAuth(t, a, srvTLS.Credentials())
	tenantCert := ca.issue(t, leaf{uri: spiffeSearch}).tlsCert(t)
	adminCert := ca.issue(t, leaf{uri: spiffeOncall}).tlsCert(t)
	tests := []struct {
		name     string
		cert     *tls.Certificate
		md       []string
		wantCode codes.Code
	}{
		{name: "admin certificate", cert: &adminCert},
		{name: "admin token", md: bearer(tokAdmin)},
		{name: "tenant certificate", cert: &tenantCert, wantCode: codes.PermissionDenied},
		{name: "tenant token", md: bearer(tokSearch), wantCode: codes.PermissionDenied},
		{name: "unknown token", md: bearer(tokUnknown), wantCode: codes.Unauthenticated},
		{name: "no credential", wantCode: codes.Unauthenticated},
	}
	wantDrained := []string(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, tt.cert))))
			ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(tt.md...))
			_, err := detourv1.NewAdminClient(conn).Drain(ctx, &detourv1.DrainRequest{Backend: "eu-1"})
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("Drain code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if err == nil {
				wantDrained = append(wantDrained, "eu-1")
			}
			if diff := cmp.Diff(admin.Drained(), wantDrained); diff != "" {
				t.Errorf("drained (-got +want):\n%s", diff)
			}
		})
	}

	// A failing admin call is logged with its outcome.
	adminConn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, &adminCert))))
	if _, err := detourv1.NewAdminClient(adminConn).Undrain(callCtx(t), &detourv1.UndrainRequest{Backend: "eu-1"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Undrain: %v, want Unimplemented from the fake", err)
	}

	type entry struct{ Level, Msg, Method, Principal, Credential, Backend, Code string }
	var got []entry
	for _, l := range logs.Lines() {
		e := decodeLog(t, l)
		if e["msg"] == "admin call" || (e["msg"] == "call refused" && strings.HasPrefix(e["method"], adminPrefix)) {
			got = append(got, entry{e["level"], e["msg"], e["method"], e["principal"], e["credential"], e["backend"], e["code"]})
		}
	}
	want := []entry{
		{"INFO", "admin call", adminDrain, "oncall", spiffeOncall, "eu-1", "OK"},
		{"INFO", "admin call", adminDrain, "oncall", "token sha256:" + TokenSHA256(tokAdmin)[:8], "eu-1", "OK"},
		{"WARN", "call refused", adminDrain, "search", spiffeSearch, "", "PermissionDenied"},
		{"WARN", "call refused", adminDrain, "search", "token sha256:" + TokenSHA256(tokSearch)[:8], "", "PermissionDenied"},
		{"WARN", "call refused", adminDrain, "", "", "", "Unauthenticated"},
		{"WARN", "call refused", adminDrain, "", "", "", "Unauthenticated"},
		{"INFO", "admin call", "/detour.v1.Admin/Undrain", "oncall", spiffeOncall, "eu-1", "Unimplemented"},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("admin log (-got +want):\n%s", diff)
	}
}

// TestAuthOff checks local use: the tenant comes from metadata over
// plaintext, and Admin answers a loopback caller.
func TestAuthOff(t *testing.T) {
	log, logs := newLogger()
	a, err := New(Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	addr, admin := serveAuth(t, a, nil)
	conn := dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	rc := detourv1.NewRouterClient(conn)
	tests := []struct {
		name     string
		md       []string
		want     string
		wantCode codes.Code
	}{
		{name: "default", want: "default|default||"}, // no claim: metadata left as it is
		{name: "named", md: []string{TenantKey, "team-a"}, want: "team-a|team-a|team-a|"},
		{name: "token dropped before the handler", md: append(bearer(tokSearch), TenantKey, "team-a"), want: "team-a|team-a|team-a|"},
		{name: "bad name", md: []string{TenantKey, "team a;drop"}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(tt.md...))
			resp, err := rc.Complete(ctx, request("m"))
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if diff := cmp.Diff(resp.GetContent(), tt.want); err == nil && diff != "" {
				t.Errorf("caller (-got +want):\n%s", diff)
			}
		})
	}
	if _, err := detourv1.NewAdminClient(conn).Drain(callCtx(t), &detourv1.DrainRequest{Backend: "b"}); err != nil {
		t.Fatalf("loopback Drain with auth off: %v", err)
	}
	if diff := cmp.Diff(admin.Drained(), []string{"b"}); diff != "" {
		t.Errorf("drained (-got +want):\n%s", diff)
	}
	if !strings.Contains(logs.String(), `"principal":"anonymous","credential":"loopback"`) {
		t.Errorf("admin call not logged as anonymous loopback:\n%s", logs)
	}
}

// TestHealthIsPublic checks that probes need no credential, even with mTLS
// optional and tokens required.
func TestHealthIsPublic(t *testing.T) {
	a, err := New(Options{Mode: ModeToken, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, nil)
	conn := dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if _, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health check: %v", err)
	}
}

// BenchmarkUnaryInterceptor measures what authentication adds to a call on
// the token path (hash, lookup, metadata rewrite), without the network.
func BenchmarkUnaryInterceptor(b *testing.B) {
	a, err := New(Options{Mode: ModeAny, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		b.Fatal(err)
	}
	ic := a.UnaryInterceptor()
	ctx := callContext{tls: true, md: append(bearer(tokSearch), TenantKey, "x", "user-agent", "grpc-go")}.build()
	info := &grpc.UnaryServerInfo{FullMethod: routerComplete}
	req := request("deepseek-chat")
	h := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ic(ctx, req, info, h); err != nil {
			b.Fatal(err)
		}
	}
}
