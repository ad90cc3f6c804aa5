package etcd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/detour-dev/detour/internal/devetcd"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate to dir, and returns their paths.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "detour test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, keyPath, "EC PRIVATE KEY", kder)
		return cert, keyPath
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = leaf("detour", 3, x509.ExtKeyUsageClientAuth, nil)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestWatcherOverTLSWithAuth follows a document on an etcd that requires
// client certificates and a password, with a user allowed only /detour/.
func TestWatcherOverTLSWithAuth(t *testing.T) {
	p := newPKI(t, t.TempDir())
	srv, err := devetcd.Start(t.TempDir(), devetcd.WithTLS(p.serverCert, p.serverKey, p.ca))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := testCtx(t)
	tlsOnly := Config{Endpoints: srv.Endpoints(), CAFile: p.ca, CertFile: p.clientCert, KeyFile: p.clientKey}
	admin, err := tlsOnly.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "detour"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "detour", "/detour/", clientv3.GetPrefixRangeEnd("/detour/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "detour-user", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "detour-user", "detour"); return err },
		func() error { _, err := NewStore(admin, Keys{}).Put(ctx, []byte(doc("a")), 0); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up etcd auth: %v", err)
		}
	}

	full := tlsOnly
	full.Username, full.Password = "detour-user", "s3cret"
	rec := &recorder{}
	w, err := NewWatcher(WatcherConfig{Etcd: full, Apply: rec.apply, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitReady(t, w)
	if err := w.SetDrained(ctx, "a", false, ""); err != nil {
		t.Errorf("write with the user's rights: %v", err)
	}

	// Without the client certificate, or with a wrong password, etcd
	// refuses.
	noCert := full
	noCert.CertFile, noCert.KeyFile = "", ""
	wrongPass := full
	wrongPass.Password = "guess"
	for name, ec := range map[string]Config{"no client cert": noCert, "wrong password": wrongPass} {
		ec.DialTimeout = time.Second
		cli, err := ec.Client()
		if err == nil {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err = NewStore(cli, Keys{}).Get(sctx)
			cancel()
			cli.Close()
		}
		if err == nil {
			t.Errorf("%s: read succeeded", name)
		}
	}
}
