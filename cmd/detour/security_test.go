package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testpki"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestSecurityEndToEnd runs detour with mutual TLS and tokens, drives good
// and bad calls, and scans every log line and answer for the secrets.
func TestSecurityEndToEnd(t *testing.T) {
	const (
		billingToken = "tok-billing-7f3a9c2e51d84b60"
		oncallToken  = "tok-oncall-2b8e4d1f9a6c7350"
		upstreamKey  = "sk-upstream-5c1e8a7d3f9b2046"
	)
	t.Setenv("DETOUR_KEY_TEST_UPSTREAM", upstreamKey)
	pki := testpki.New(t)
	pki.Issue(t, "server", "detour", "", true)
	search := pki.Issue(t, "search", "search", "spiffe://corp/ns/search/sa/api", false)
	other := testpki.New(t).Issue(t, "stranger", "stranger", "spiffe://corp/ns/x/sa/y", false)

	live := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	// A closed port: every call to "dead-1" fails, with the key configured.
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := lis.Addr().String()
	lis.Close()
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "dead", Backends: []regions.Backend{{Name: "dead-1", Endpoint: "http://" + deadAddr + "/v1", APIKeyEnv: "DETOUR_KEY_TEST_UPSTREAM"}}},
			{Name: "home", Priority: 1, Backends: []regions.Backend{{Name: "home-1", Endpoint: "http://" + live.HTTPAddr() + "/v1", APIKeyEnv: "DETOUR_KEY_TEST_UPSTREAM"}}},
		},
		Tenants: []regions.Tenant{
			{Principal: regions.Principal{Name: "search", Identities: []string{"spiffe://corp/ns/search/sa/api"}}, QPS: 0.001, Burst: 2},
			{Principal: regions.Principal{Name: "billing", TokenSHA256: []string{sha(billingToken)}}, Models: []string{"deepseek-chat"}},
		},
		Admins: []regions.Principal{{Name: "oncall", TokenSHA256: []string{sha(oncallToken)}}},
	}
	logs := &lockedBuffer{}
	m := &Main{Listen: "127.0.0.1:0", Region: "dead", Grace: 5 * time.Second, config: cfg,
		Logger:  slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observe: ObserveOptions{LogCalls: true},
		Security: SecurityOptions{
			TLSCert: pki.Path("server.crt"), TLSKey: pki.Path("server.key"),
			TLSClientCA: pki.Path("ca.crt"), TLSReload: time.Hour, Auth: auth.ModeAny,
		}}
	addr, _ := runMain(t, m)

	conn := func(cert *tls.Certificate) *grpc.ClientConn {
		tc := &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(callCtx(t), "authorization", "Bearer "+tok)
	}
	var seen []string // every answer and status message, for the scan
	call := func(cc *grpc.ClientConn, ctx context.Context, model string) codes.Code {
		r := userReq("hello")
		r.Model = model
		resp, err := detourv1.NewRouterClient(cc).Complete(ctx, r)
		seen = append(seen, fmt.Sprint(resp), fmt.Sprint(status.Convert(err).Proto()))
		return status.Code(err)
	}
	mtls, tlsOnly, stranger := conn(&search), conn(nil), conn(&other)
	tests := []struct {
		name string
		cc   *grpc.ClientConn
		ctx  context.Context
		// model defaults to deepseek-chat
		model string
		want  codes.Code
	}{
		{name: "mTLS identity", cc: mtls, ctx: callCtx(t), want: codes.OK},
		{name: "token", cc: tlsOnly, ctx: withToken(billingToken), want: codes.OK},
		{name: "token, model not allowed", cc: tlsOnly, ctx: withToken(billingToken), model: "deepseek-reasoner", want: codes.PermissionDenied},
		{name: "no credential", cc: tlsOnly, ctx: callCtx(t), want: codes.Unauthenticated},
		{name: "unknown token", cc: tlsOnly, ctx: withToken("tok-nobody-000000"), want: codes.Unauthenticated},
		{name: "certificate from another CA", cc: stranger, ctx: callCtx(t), want: codes.Unavailable},
		{name: "spoofed tenant header is ignored", cc: mtls, ctx: metadata.AppendToOutgoingContext(callCtx(t), "x-detour-tenant", "billing"), want: codes.OK},
		// search's quota is a burst of 2 and then nearly nothing.
		{name: "tenant quota per identity", cc: mtls, ctx: callCtx(t), want: codes.ResourceExhausted},
		{name: "another tenant is not charged", cc: tlsOnly, ctx: withToken(billingToken), want: codes.OK},
	}
	for _, tt := range tests {
		model := tt.model
		if model == "" {
			model = "deepseek-chat"
		}
		if got := call(tt.cc, tt.ctx, model); got != tt.want {
			t.Errorf("%s: code %v, want %v", tt.name, got, tt.want)
		}
	}
	// Plaintext to a TLS listener fails.
	plain, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got := call(plain, withToken(billingToken), "deepseek-chat"); got != codes.Unavailable {
		t.Errorf("plaintext to TLS: code %v, want Unavailable", got)
	}
	// Admin: a tenant may not drain; an admin may, and is logged by name.
	admin := func(ctx context.Context) codes.Code {
		_, err := detourv1.NewAdminClient(tlsOnly).Drain(ctx, &detourv1.DrainRequest{Backend: "dead-1"})
		seen = append(seen, fmt.Sprint(status.Convert(err).Proto()))
		return status.Code(err)
	}
	if got := admin(withToken(billingToken)); got != codes.PermissionDenied {
		t.Errorf("tenant drain: %v, want PermissionDenied", got)
	}
	if got := admin(withToken(oncallToken)); got != codes.OK {
		t.Errorf("admin drain: %v, want OK", got)
	}
	st, err := detourv1.NewAdminClient(tlsOnly).Status(withToken(oncallToken), &detourv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seen = append(seen, fmt.Sprint(st))

	out := logs.String()
	if !strings.Contains(out, `"principal":"oncall"`) && !strings.Contains(out, "oncall") {
		t.Error("the admin drain is not logged with who did it")
	}
	if !strings.Contains(out, `"transport":"mutual TLS"`) {
		t.Error("start-up log does not say the listener is mutual TLS")
	}
	for _, secret := range []string{billingToken, oncallToken, upstreamKey} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q... appears in the logs", secret[:8])
		}
		for _, s := range seen {
			if strings.Contains(s, secret) {
				t.Errorf("secret %q... appears in an answer: %s", secret[:8], s)
			}
		}
	}
	if !strings.Contains(out, `"attempts":2`) {
		t.Error("no call failed over from dead-1: the scan saw no upstream failure")
	}
}

func TestPlaintextSaysSo(t *testing.T) {
	f := startFake(t, fakellm.Config{Region: "a", Name: "a-1"}, false)
	logs := &lockedBuffer{}
	m := &Main{Listen: "127.0.0.1:0", Region: "a", Grace: time.Second,
		config: &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{openaiBackend("a-1", f)}}}},
		Logger: slog.New(slog.NewJSONHandler(logs, nil))}
	runMain(t, m)
	if !strings.Contains(logs.String(), "plaintext") || !strings.Contains(logs.String(), `"level":"WARN"`) {
		t.Errorf("start-up log does not warn that the listener is plaintext:\n%s", logs.String())
	}
}
