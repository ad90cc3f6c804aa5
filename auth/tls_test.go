package auth

import (
	"crypto/tls"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// TestMutualTLS checks who gets through a listener that requires client
// certificates, and which tenant each caller becomes.
func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "detour test CA")
	other := newCA(t, "another CA")
	srvTLS := newServerTLS(t, ca, ca, -1, false)
	a, err := New(Options{Mode: ModeTLS, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, srvTLS.Credentials())
	cert := func(ca *testCA, l leaf) *tls.Certificate { c := ca.issue(t, l).tlsCert(t); return &c }
	tests := []struct {
		name     string
		cert     *tls.Certificate
		want     string
		wantCode codes.Code
	}{
		{name: "SPIFFE identity", cert: cert(ca, leaf{cn: "not-used", uri: spiffeSearch}), want: "search|search||"}, // no claim: metadata left as it is
		{name: "common name", cert: cert(ca, leaf{cn: "billing"}), want: "billing|billing||"},
		{name: "no certificate", wantCode: codes.Unavailable},
		{name: "certificate from another CA", cert: cert(other, leaf{uri: spiffeSearch}), wantCode: codes.Unavailable},
		{name: "unknown identity", cert: cert(ca, leaf{cn: "mallory"}), wantCode: codes.PermissionDenied},
		{name: "admin identity on the Router", cert: cert(ca, leaf{uri: spiffeOncall}), wantCode: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, tt.cert))))
			resp, err := detourv1.NewRouterClient(conn).Complete(callCtx(t), request("deepseek-chat"))
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
			if diff := cmp.Diff(resp.GetContent(), tt.want); err == nil && diff != "" {
				t.Errorf("caller (-got +want):\n%s", diff)
			}
		})
	}
}

// servedSerial opens a new TLS connection to addr and returns the serial
// number of the server's certificate. It does not verify the chain: the
// tests look at which certificate is served, not whether it is trusted.
func servedSerial(t *testing.T, addr string, cert *tls.Certificate) *big.Int {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// TestRotation rotates the server certificate and the client CA the way
// Kubernetes updates a Secret volume, and checks that new connections get
// both without a restart.
func TestRotation(t *testing.T) {
	ca1, ca2 := newCA(t, "CA 1"), newCA(t, "CA 2")
	d := newSecretDir(t)
	first := ca1.issue(t, leaf{cn: "detour", server: true})
	d.update(t, first.certPEM, first.keyPEM, ca1.pem)
	log, logs := newLogger()
	srvTLS, err := NewServerTLS(ServerTLSOptions{
		CertFile: d.path("tls.crt"), KeyFile: d.path("tls.key"), ClientCAFile: d.path("ca.crt"),
		PollInterval: 5 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srvTLS.Close()
	a, err := New(Options{Mode: ModeTLS, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, srvTLS.Credentials())
	client1 := ca1.issue(t, leaf{uri: spiffeSearch}).tlsCert(t)
	client2 := ca2.issue(t, leaf{uri: spiffeSearch}).tlsCert(t)
	call := func(root *testCA, cert tls.Certificate) error {
		conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, root, &cert))))
		defer conn.Close()
		_, err := detourv1.NewRouterClient(conn).Complete(callCtx(t), request("deepseek-chat"))
		return err
	}

	if got := servedSerial(t, addr, &client1); got.Cmp(first.serial) != 0 {
		t.Fatalf("serving serial %v, want %v", got, first.serial)
	}
	if err := call(ca1, client1); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	// An open connection outlives the rotation.
	kept := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca1, &client1))))
	if _, err := detourv1.NewRouterClient(kept).Complete(callCtx(t), request("deepseek-chat")); err != nil {
		t.Fatal(err)
	}

	// The new server certificate is signed by CA 2, which also becomes the
	// only client CA.
	second := ca2.issue(t, leaf{cn: "detour", server: true})
	d.update(t, second.certPEM, second.keyPEM, ca2.pem)
	waitFor(t, 10*time.Second, "the new serial on a new connection", func() bool {
		return servedSerial(t, addr, &client2).Cmp(second.serial) == 0
	})
	if got := srvTLS.Leaf().SerialNumber; got.Cmp(second.serial) != 0 {
		t.Errorf("Leaf serial = %v, want %v", got, second.serial)
	}
	if err := call(ca2, client2); err != nil {
		t.Errorf("client of the new CA: %v", err)
	}
	if err := call(ca2, client1); status.Code(err) != codes.Unavailable {
		t.Errorf("client of the removed CA: %v, want Unavailable", err)
	}
	if _, err := detourv1.NewRouterClient(kept).Complete(callCtx(t), request("deepseek-chat")); err != nil {
		t.Errorf("connection opened before the rotation: %v", err)
	}
	if n := strings.Count(logs.String(), "tls certificate loaded"); n != 2 {
		t.Errorf("%d loads logged, want 2:\n%s", n, logs)
	}
}

// TestBadFileKeepsServing checks that a broken update is logged once and
// leaves the previous certificate serving, and that the next good update is
// picked up.
func TestBadFileKeepsServing(t *testing.T) {
	ca := newCA(t, "detour test CA")
	d := newSecretDir(t)
	first := ca.issue(t, leaf{cn: "detour", server: true})
	d.update(t, first.certPEM, first.keyPEM, ca.pem)
	log, logs := newLogger()
	srvTLS, err := NewServerTLS(ServerTLSOptions{
		CertFile: d.path("tls.crt"), KeyFile: d.path("tls.key"), ClientCAFile: d.path("ca.crt"),
		PollInterval: 5 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srvTLS.Close()
	addr, _ := serve(t, grpc.Creds(srvTLS.Credentials()))
	client := ca.issue(t, leaf{cn: "billing"}).tlsCert(t)
	failures := func() int { return strings.Count(logs.String(), "tls reload failed") }

	second := ca.issue(t, leaf{cn: "detour", server: true})
	bad := []struct {
		name          string
		cert, key, ca []byte
	}{
		{name: "truncated certificate", cert: second.certPEM[:len(second.certPEM)/2], key: second.keyPEM, ca: ca.pem},
		{name: "key of another certificate", cert: second.certPEM, key: first.keyPEM, ca: ca.pem},
		{name: "empty CA bundle", cert: second.certPEM, key: second.keyPEM, ca: []byte("\n")},
		{name: "CA bundle with garbage", cert: second.certPEM, key: second.keyPEM, ca: append(append([]byte{}, ca.pem...), "junk"...)},
	}
	for i, b := range bad {
		d.update(t, b.cert, b.key, b.ca)
		waitFor(t, 10*time.Second, b.name+" logged", func() bool { return failures() >= 2*i+1 })
		if got := servedSerial(t, addr, &client); got.Cmp(first.serial) != 0 {
			t.Errorf("%s: serving serial %v, want the previous %v", b.name, got, first.serial)
		}
		if err := srvTLS.Reload(); err == nil {
			t.Errorf("%s: Reload() = nil error", b.name)
		}
	}
	d.update(t, second.certPEM, second.keyPEM, ca.pem)
	waitFor(t, 10*time.Second, "the good update", func() bool {
		return servedSerial(t, addr, &client).Cmp(second.serial) == 0
	})
	// One line per bad version from the poller and one per forced Reload,
	// however often the poller looked at them.
	if got, want := failures(), 2*len(bad); got != want {
		t.Errorf("%d failures logged, want %d:\n%s", got, want, logs)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Errorf("log holds key material:\n%s", logs)
	}
}

func TestNewServerTLSErrors(t *testing.T) {
	ca := newCA(t, "detour test CA")
	srv := ca.issue(t, leaf{cn: "detour", server: true})
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, key := write("tls.crt", srv.certPEM), write("tls.key", srv.keyPEM)
	tests := []struct {
		name string
		opts ServerTLSOptions
	}{
		{name: "no files", opts: ServerTLSOptions{}},
		{name: "missing key", opts: ServerTLSOptions{CertFile: cert, KeyFile: filepath.Join(dir, "nope")}},
		{name: "key is a certificate", opts: ServerTLSOptions{CertFile: cert, KeyFile: cert}},
		{name: "CA bundle without certificates", opts: ServerTLSOptions{CertFile: cert, KeyFile: key, ClientCAFile: write("empty.crt", nil)}},
		{name: "CA bundle is a key", opts: ServerTLSOptions{CertFile: cert, KeyFile: key, ClientCAFile: key}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Logger = discard()
			s, err := NewServerTLS(tt.opts)
			if err == nil {
				s.Close()
				t.Fatal("NewServerTLS succeeded")
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") || strings.Contains(err.Error(), string(srv.keyPEM[40:80])) {
				t.Errorf("error shows key material: %v", err)
			}
		})
	}
}

// TestClientTLS checks the upstream helper: verified by default, a private
// CA per backend, a client certificate for upstream mutual TLS.
func TestClientTLS(t *testing.T) {
	ca, other := newCA(t, "upstream CA"), newCA(t, "another CA")
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile, otherFile := write("ca.crt", ca.pem), write("other.crt", other.pem)
	cl := ca.issue(t, leaf{uri: spiffeSearch})
	certFile, keyFile := write("client.crt", cl.certPEM), write("client.key", cl.keyPEM)

	srvTLS := newServerTLS(t, ca, ca, -1, false)
	a, err := New(Options{Mode: ModeTLS, Config: static(testConfig()), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveAuth(t, a, srvTLS.Credentials())

	tests := []struct {
		name     string
		opts     ClientTLSOptions
		wantCode codes.Code
	}{
		{name: "private CA and client certificate", opts: ClientTLSOptions{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}},
		{name: "server name override", opts: ClientTLSOptions{CAFile: caFile, CertFile: certFile, KeyFile: keyFile, ServerName: "localhost"}},
		{name: "wrong server name", opts: ClientTLSOptions{CAFile: caFile, CertFile: certFile, KeyFile: keyFile, ServerName: "api.example.com"}, wantCode: codes.Unavailable},
		{name: "system roots do not know the private CA", opts: ClientTLSOptions{CertFile: certFile, KeyFile: keyFile}, wantCode: codes.Unavailable},
		{name: "another CA", opts: ClientTLSOptions{CAFile: otherFile, CertFile: certFile, KeyFile: keyFile}, wantCode: codes.Unavailable},
		{name: "no client certificate", opts: ClientTLSOptions{CAFile: caFile}, wantCode: codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ClientTLS(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			conn := dial(t, addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			_, err = detourv1.NewRouterClient(conn).Complete(callCtx(t), request("deepseek-chat"))
			if code := status.Code(err); code != tt.wantCode {
				t.Errorf("code = %v (%v), want %v", code, err, tt.wantCode)
			}
		})
	}

	for _, o := range []ClientTLSOptions{
		{CAFile: filepath.Join(dir, "missing")},
		{CAFile: keyFile},
		{CertFile: certFile},
		{CertFile: certFile, KeyFile: certFile},
	} {
		if _, err := ClientTLS(o); err == nil {
			t.Errorf("ClientTLS(%+v) = nil error", o)
		} else if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("error shows key material: %v", err)
		}
	}
	if cfg, err := ClientTLS(ClientTLSOptions{}); err != nil || cfg.InsecureSkipVerify || cfg.RootCAs != nil {
		t.Errorf("zero options: %+v, %v; want verification against system roots", cfg, err)
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "token")
	if err := os.WriteFile(p, []byte("  "+tokSearch+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ReadSecretFile(p)
	if err != nil || s.Reveal() != tokSearch {
		t.Errorf("ReadSecretFile = %v, %v", s, err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecretFile(empty); !errors.Is(err, ErrEmptySecret) {
		t.Errorf("empty file: %v, want ErrEmptySecret", err)
	}
	if _, err := ReadSecretFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
