package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/detour-dev/detour/internal/testkit"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// grpcLogs captures grpc-go's own log for the whole package, so that the
// secrets scan covers it too.
var grpcLogs = &logBuffer{}

func TestMain(m *testing.M) {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2WithVerbosity(grpcLogs, grpcLogs, grpcLogs, 2))
	goleak.VerifyTestMain(m)
}

// logBuffer is a concurrency-safe io.Writer.
type logBuffer = testkit.Buffer

// newLogger returns a JSON logger at debug level and its output.
func newLogger() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Until(t, timeout, what, cond)
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serials = struct {
	sync.Mutex
	n int64
}{n: 1000}

func nextSerial() *big.Int {
	serials.Lock()
	defer serials.Unlock()
	serials.n++
	return big.NewInt(serials.n)
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf describes a certificate to issue.
type leaf struct {
	cn     string
	uri    string // a URI SAN such as a SPIFFE ID
	server bool   // for 127.0.0.1 and localhost
}

// issued is a certificate and key in PEM, and its serial number.
type issued struct {
	certPEM, keyPEM []byte
	serial          *big.Int
}

func (ca *testCA) issue(t *testing.T, l leaf) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: l.cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if l.uri != "" {
		u, err := url.Parse(l.uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	if l.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return issued{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		serial:  tmpl.SerialNumber,
	}
}

// tlsCert returns i as a tls.Certificate for a client.
func (i issued) tlsCert(t *testing.T) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(i.certPEM, i.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// secretDir is a directory laid out like a Kubernetes Secret volume:
// tls.crt, tls.key and ca.crt are links into ..data, a link to a timestamped
// directory that an update replaces atomically.
type secretDir struct {
	dir string
	gen int
}

func newSecretDir(t *testing.T) *secretDir {
	t.Helper()
	d := &secretDir{dir: t.TempDir()}
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(d.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *secretDir) path(name string) string { return filepath.Join(d.dir, name) }

// update writes a new version of the files and swaps ..data to it, the way
// the kubelet does.
func (d *secretDir) update(t *testing.T, cert, key, ca []byte) {
	t.Helper()
	d.gen++
	gen := fmt.Sprintf("..gen_%d", d.gen)
	if err := os.Mkdir(filepath.Join(d.dir, gen), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": cert, "tls.key": key, "ca.crt": ca} {
		if err := os.WriteFile(filepath.Join(d.dir, gen, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// fakeRouter answers with who the interceptors said the caller is, as
// "principal|tenant|x-detour-tenant|authorization".
type fakeRouter struct {
	detourv1.UnimplementedRouterServer
}

var _ detourv1.RouterServer = (*fakeRouter)(nil)

func describeCaller(ctx context.Context) string {
	id, _ := IdentityFrom(ctx)
	md, _ := metadata.FromIncomingContext(ctx)
	return strings.Join([]string{id.Principal, id.Tenant, strings.Join(md.Get(TenantKey), ","), strings.Join(md.Get("authorization"), ",")}, "|")
}

func (fakeRouter) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return &detourv1.CompleteResponse{Model: req.GetModel(), Content: describeCaller(ctx)}, nil
}

func (fakeRouter) StreamComplete(req *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
	return st.Send(&detourv1.CompleteChunk{Model: req.GetModel(), Delta: describeCaller(st.Context())})
}

// fakeAdmin records the backends it was asked to drain.
type fakeAdmin struct {
	detourv1.UnimplementedAdminServer
	mu      sync.Mutex
	drained []string
}

var _ detourv1.AdminServer = (*fakeAdmin)(nil)

func (f *fakeAdmin) Drain(_ context.Context, req *detourv1.DrainRequest) (*detourv1.DrainResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drained = append(f.drained, req.GetBackend())
	return &detourv1.DrainResponse{}, nil
}

func (f *fakeAdmin) Drained() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.drained...)
}

// serve starts a gRPC server on loopback with the fake Router and Admin
// services and the health service, and stops it when the test ends.
func serve(t *testing.T, opts ...grpc.ServerOption) (string, *fakeAdmin) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	admin := &fakeAdmin{}
	detourv1.RegisterRouterServer(srv, fakeRouter{})
	detourv1.RegisterAdminServer(srv, admin)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String(), admin
}

// serveAuth starts a server with a's interceptors and creds.
func serveAuth(t *testing.T, a *Authenticator, creds credentials.TransportCredentials, extra ...grpc.ServerOption) (string, *fakeAdmin) {
	t.Helper()
	opts := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamInterceptor()),
	}, extra...)
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	return serve(t, opts...)
}

// dial returns a client connection closed when the test ends.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func request(model string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: model, Messages: []*detourv1.Message{{Role: "user", Content: "hi"}}}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// decodeLog parses one JSON log line into strings.
func decodeLog(t *testing.T, line string) map[string]string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// newServerTLS writes a server certificate from ca (and clientCA's bundle
// when not nil) to a Secret-like directory and serves them.
func newServerTLS(t *testing.T, ca, clientCA *testCA, interval time.Duration, optionalCert bool) *ServerTLS {
	t.Helper()
	d := newSecretDir(t)
	srv := ca.issue(t, leaf{cn: "detour", server: true})
	var caPEM []byte
	opts := ServerTLSOptions{CertFile: d.path("tls.crt"), KeyFile: d.path("tls.key"), PollInterval: interval, OptionalClientCert: optionalCert, Logger: discard()}
	if clientCA != nil {
		caPEM = clientCA.pem
		opts.ClientCAFile = d.path("ca.crt")
	}
	d.update(t, srv.certPEM, srv.keyPEM, caPEM)
	s, err := NewServerTLS(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clientTLS trusts ca and presents cert, if any.
func clientTLS(t *testing.T, ca *testCA, cert *tls.Certificate) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}
