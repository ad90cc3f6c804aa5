package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
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
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// testPKI is a CA with the certificates one test needs, written to dir.
type testPKI struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPool *x509.CertPool
	serial int64
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir(), serial: 1}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(p.ca)
	p.write(t, "ca.crt", "CERTIFICATE", der)
	return p
}

func (p *testPKI) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue makes a leaf certificate; server certs are for 127.0.0.1.
func (p *testPKI) issue(t *testing.T, name, cn, uri string, server bool) tls.Certificate {
	t.Helper()
	p.serial++
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	p.write(t, name+".crt", "CERTIFICATE", der)
	p.write(t, name+".key", "EC PRIVATE KEY", kder)
	c, err := tls.LoadX509KeyPair(filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

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
	t.Setenv("DETOUR_TEST_UPSTREAM_KEY", upstreamKey)
	pki := newPKI(t)
	pki.issue(t, "server", "detour", "", true)
	search := pki.issue(t, "search", "search", "spiffe://corp/ns/search/sa/api", false)
	other := newPKI(t).issue(t, "stranger", "stranger", "spiffe://corp/ns/x/sa/y", false)

	live := startFake(t, fakellm.Config{Region: "home", Name: "home-1"}, false)
	// A closed port: every call to "dead-1" fails, with the key configured.
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := lis.Addr().String()
	lis.Close()
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "dead", Backends: []regions.Backend{{Name: "dead-1", Endpoint: "http://" + deadAddr + "/v1", APIKeyEnv: "DETOUR_TEST_UPSTREAM_KEY"}}},
			{Name: "home", Priority: 1, Backends: []regions.Backend{{Name: "home-1", Endpoint: "http://" + live.HTTPAddr() + "/v1", APIKeyEnv: "DETOUR_TEST_UPSTREAM_KEY"}}},
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
			TLSCert: filepath.Join(pki.dir, "server.crt"), TLSKey: filepath.Join(pki.dir, "server.key"),
			TLSClientCA: filepath.Join(pki.dir, "ca.crt"), TLSReload: time.Hour, Auth: auth.ModeAny,
		}}
	addr, _ := runMain(t, m)

	conn := func(cert *tls.Certificate) *grpc.ClientConn {
		tc := &tls.Config{RootCAs: pki.caPool, MinVersion: tls.VersionTLS12}
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
