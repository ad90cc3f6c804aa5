package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/testpki"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// startAuthAdmin serves detour.v1.Admin on loopback as `detour serve
// --admin-listen` does: the auth package's TLS (nil: plaintext), hardening
// and interceptors in front of server.NewAdminServer. It returns the
// address.
func startAuthAdmin(t *testing.T, cfg *regions.Config, certs *auth.ServerTLS, mode auth.Mode) string {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg, Revision: 3, Source: "inline", AppliedAt: time.Now()},
		router.Options{NewProvider: func(regions.Backend) (router.Provider, error) { return idle{}, nil }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	authn, err := auth.New(auth.Options{Mode: mode, Config: func() *regions.Config { return rt.Snapshot().Config }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	opts := auth.ServerHardening(auth.Hardening{})
	if certs != nil {
		opts = append(opts, grpc.Creds(certs.Credentials()))
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(authn.UnaryInterceptor()), grpc.ChainStreamInterceptor(authn.StreamInterceptor()))
	gs := server.NewAdminServer(server.NewAdmin(rt, server.AdminOptions{Region: "r", Logger: log}), opts...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

func serverTLS(t *testing.T, p *testpki.PKI, optionalClientCert bool) *auth.ServerTLS {
	t.Helper()
	certs, err := auth.NewServerTLS(auth.ServerTLSOptions{
		CertFile: p.Path("server.crt"), KeyFile: p.Path("server.key"), ClientCAFile: p.Path("ca.crt"),
		OptionalClientCert: optionalClientCert, PollInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { certs.Close() })
	return certs
}

// TestStatusAuth calls Status through detourctl's --tls-* and --token-file
// flags against real Admin listeners with mutual TLS and tokens: admins get
// the status, everyone else a clear error and exit 1, and a token never
// crosses the network in the clear.
func TestStatusAuth(t *testing.T) {
	const (
		oncallToken  = "tok-oncall-51c7e2a9d04b83f6"
		billingToken = "tok-billing-a83d0c6e72f915b4"
	)
	pki := testpki.New(t)
	pki.Issue(t, "server", "detour", "", true)
	pki.Issue(t, "oncall", "oncall", "", false)
	pki.Issue(t, "search", "search", "spiffe://corp/ns/search/sa/api", false)
	other := testpki.New(t)
	other.Issue(t, "oncall", "oncall", "", false) // same name, another CA
	oncallTok := writeFile(t, "oncall.token", oncallToken+"\n")
	billingTok := writeFile(t, "billing.token", billingToken)
	unknownTok := writeFile(t, "unknown.token", "tok-nobody-0000000000000000")
	emptyTok := writeFile(t, "empty.token", "\n")

	cfg, err := regions.Load([]byte(doc("a", "b")))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tenants = []regions.Tenant{
		{Principal: regions.Principal{Name: "search", Identities: []string{"spiffe://corp/ns/search/sa/api"}}},
		{Principal: regions.Principal{Name: "billing", TokenSHA256: []string{auth.TokenSHA256(billingToken)}}},
	}
	cfg.Admins = []regions.Principal{{Name: "oncall", Identities: []string{"CN=oncall"}, TokenSHA256: []string{auth.TokenSHA256(oncallToken)}}}

	// As `detour serve --auth any` with a client CA: certificates optional
	// at the handshake, tokens or certificates identify.
	anyAddr := startAuthAdmin(t, cfg, serverTLS(t, pki, true), auth.ModeAny)
	// As --auth tls: a client certificate is required at the handshake.
	tlsAddr := startAuthAdmin(t, cfg, serverTLS(t, pki, false), auth.ModeTLS)
	// As --auth token without TLS: tokens from loopback peers only.
	plainAddr := startAuthAdmin(t, cfg, nil, auth.ModeToken)

	ca := []string{"--tls-ca", pki.Path("ca.crt")}
	mtls := func(p *testpki.PKI, name string) []string {
		return append(ca, "--tls-cert", p.Path(name+".crt"), "--tls-key", p.Path(name+".key"))
	}
	tok := func(file string) []string { return []string{"--token-file", file} }
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name     string
		addr     string
		flags    []string
		wantExit int
		wantCode codes.Code // of the Admin call, when it was made
		want     []string   // in stdout (exit 0) or in the error and stderr
	}{
		{name: "admin certificate", addr: anyAddr, flags: mtls(pki, "oncall"),
			want: []string{"config     inline, revision 3", "a        r       -     openai  no       closed   256    0          0     0       0%    0%     slow-start"}},
		{name: "admin token over TLS", addr: anyAddr, flags: cat(ca, tok(oncallTok)),
			want: []string{"config     inline, revision 3"}},
		{name: "admin certificate, certificate required", addr: tlsAddr, flags: mtls(pki, "oncall"),
			want: []string{"config     inline, revision 3"}},
		{name: "admin token over loopback plaintext", addr: plainAddr, flags: tok(oncallTok),
			want: []string{"config     inline, revision 3"}},

		{name: "tenant token", addr: anyAddr, flags: cat(ca, tok(billingTok)), wantExit: 1, wantCode: codes.PermissionDenied,
			want: []string{"admin " + anyAddr + ": status: permission denied: billing is not an admin", "hint: the credential is valid but not an admin's"}},
		{name: "tenant certificate", addr: anyAddr, flags: mtls(pki, "search"), wantExit: 1, wantCode: codes.PermissionDenied,
			want: []string{"permission denied: search is not an admin"}},
		{name: "no credential", addr: anyAddr, flags: ca, wantExit: 1, wantCode: codes.Unauthenticated,
			want: []string{"status: unauthenticated: ", "hint: detour wants a credential it knows: an admin's --token-file, or --tls-cert and --tls-key"}},
		{name: "unknown token", addr: anyAddr, flags: cat(ca, tok(unknownTok)), wantExit: 1, wantCode: codes.Unauthenticated,
			want: []string{"status: unauthenticated: ", "hint: detour did not accept this credential"}},
		{name: "plaintext to a TLS listener", addr: anyAddr, wantExit: 1, wantCode: codes.Unavailable,
			want: []string{"status: unavailable: ", "hint: if detour's listener uses TLS, add --tls-ca"}},
		{name: "no client certificate where one is required", addr: tlsAddr, flags: cat(ca, tok(oncallTok)), wantExit: 1, wantCode: codes.Unavailable,
			want: []string{"status: unavailable: ", "add --tls-cert and --tls-key"}},
		{name: "certificate from another CA", addr: tlsAddr, flags: mtls(other, "oncall"), wantExit: 1, wantCode: codes.Unavailable,
			want: []string{"status: unavailable: ", "that detour trusts the CA of --tls-cert"}},
		{name: "TLS to a plaintext listener", addr: plainAddr, flags: cat(ca, tok(oncallTok)), wantExit: 1, wantCode: codes.Unavailable,
			want: []string{"status: unavailable: "}},

		{name: "token in the clear to another host", addr: "192.0.2.7:50052", flags: tok(oncallTok), wantExit: 2,
			want: []string{"refusing to send the --token-file token in the clear to 192.0.2.7:50052: add --tls-ca"}},
		{name: "certificate without key", addr: anyAddr, flags: cat(ca, []string{"--tls-cert", pki.Path("oncall.crt")}), wantExit: 2,
			want: []string{"--tls-cert and --tls-key go together"}},
		{name: "missing token file", addr: anyAddr, flags: cat(ca, tok(filepath.Join(t.TempDir(), "none"))), wantExit: 1,
			want: []string{"--token-file: secret file: open "}},
		{name: "empty token file", addr: anyAddr, flags: cat(ca, tok(emptyTok)), wantExit: 1,
			want: []string{"--token-file: secret file " + emptyTok + ": secret is empty"}},
		{name: "missing CA file", addr: anyAddr, flags: []string{"--tls-ca", filepath.Join(t.TempDir(), "none.crt")}, wantExit: 1,
			want: []string{"--tls-ca, --tls-cert, --tls-key: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Global flags go before or after the command.
			args := append(append([]string{"status", "--addr", tt.addr}, tt.flags...), "--timeout", "10s")
			out, stderr, err := ctl(t, args...)
			if got := exitCode(err); got != tt.wantExit {
				t.Fatalf("exit %d (err %v, stderr %q), want %d", got, err, stderr, tt.wantExit)
			}
			text := out
			if err != nil {
				text = err.Error() + "\n" + stderr
			}
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("output lacks %q:\n%s", w, text)
				}
			}
			if tt.wantCode != codes.OK {
				if got := status.Code(err); got != tt.wantCode {
					t.Errorf("status code %v, want %v (err %v)", got, tt.wantCode, err)
				}
				var ae *adminError
				if !errors.As(err, &ae) {
					t.Errorf("err %T is not explained as an adminError", err)
				}
			}
			for _, secret := range []string{oncallToken, billingToken} {
				if strings.Contains(out+stderr, secret) || err != nil && strings.Contains(err.Error(), secret) {
					t.Errorf("a token appears in detourctl's output")
				}
			}
		})
	}
	// The flags also go before the command, with -o json.
	out, _, err := ctl(t, append(append([]string{"--addr", anyAddr}, mtls(pki, "oncall")...), "-o", "json", "status")...)
	var js struct {
		ConfigSource string `json:"config_source"`
	}
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || js.ConfigSource != "inline" {
		t.Errorf("flags before the command: %v\n%s", err, out)
	}
}

func TestLoopback(t *testing.T) {
	tests := []struct {
		target string
		want   bool
	}{
		{"127.0.0.1:50052", true},
		{"127.9.9.9:1", true},
		{"[::1]:50052", true},
		{"localhost:50052", true},
		{"dns:///localhost:50052", true},
		{"passthrough:///127.0.0.1:50052", true},
		{"unix:///run/detour/admin.sock", true},
		{"10.0.0.5:50052", false},
		{"detour-headless.llm.svc:50052", false},
		{"dns:///detour.llm.svc:50052", false},
		{"dns://8.8.8.8/localhost.evil.example:50052", false},
		{"[::]:50052", false},
	}
	for _, tt := range tests {
		if got := loopback(tt.target); got != tt.want {
			t.Errorf("loopback(%q) = %v, want %v", tt.target, got, tt.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"done", nil, 0},
		{"usage", errUsage, 2},
		{"reported", errReported, 1},
		{"admin refused", &adminError{err: status.Error(codes.PermissionDenied, "x is not an admin")}, 1},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestUnreachableHints guards what detourctl says when it reaches nothing:
// an etcd endpoint where nothing listens is named with "connection refused"
// at once (not a "context deadline exceeded" when --timeout runs out), a
// refused Admin address gets no TLS advice, and a Router listener without
// the Admin service (detour serve --admin-listen) points at the admin port.
func TestUnreachableHints(t *testing.T) {
	nothing := closedAddr(t)
	routerOnly := grpc.NewServer()
	healthpb.RegisterHealthServer(routerOnly, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); routerOnly.Serve(lis) }()
	defer func() { routerOnly.Stop(); <-done }()
	router := lis.Addr().String()

	etcdRefused := "etcd unreachable: " + nothing + ": connection refused (nothing listens there)\n" +
		"  hint: start etcd, or point --endpoints (or $DETOUR_ETCD_ENDPOINTS) at it; for one on this machine, 'detour dev etcd' prints its endpoint"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "config get, etcd refused", args: []string{"--endpoints", nothing, "--timeout", "60s", "config", "get"}, want: etcdRefused},
		{name: "drain, etcd refused", args: []string{"drain", "a", "--endpoints", "http://" + nothing, "--timeout", "60s"},
			want: strings.Replace(etcdRefused, nothing, "http://"+nothing, 1)},
		{name: "config apply, etcd refused", args: []string{"--endpoints", nothing, "--timeout", "60s", "config", "apply", "-f", writeFile(t, "c.yaml", doc("a"))}, want: etcdRefused},
		{name: "status, nothing listens", args: []string{"status", "--addr", nothing, "--timeout", "60s"},
			want: "admin " + nothing + ": status: connection refused\n" +
				"  hint: nothing listens at " + nothing + ": check --addr (detour's --listen, or its --admin-listen when set) and that detour is running"},
		{name: "status, nothing listens, TLS flags given", args: []string{"status", "--addr", nothing, "--tls-server-name", "detour"},
			want: "admin " + nothing + ": status: connection refused\n" +
				"  hint: nothing listens at " + nothing + ": check --addr (detour's --listen, or its --admin-listen when set) and that detour is running"},
		{name: "status on the Router port", args: []string{"status", "--addr", router},
			want: "admin " + router + ": status: unimplemented: unknown service detour.v1.Admin\n" +
				"  hint: " + router + " serves no detour.v1.Admin: when detour runs with --admin-listen (e.g. 127.0.0.1:50052), the Admin service is there only; point --addr at that address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ctl(t, tt.args...)
			if err == nil {
				t.Fatal("succeeded")
			}
			if diff := cmp.Diff(err.Error(), tt.want); diff != "" {
				t.Errorf("error (-got +want):\n%s", diff)
			}
			if code := exitCode(err); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
		})
	}
}
