package fakellm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// connKey carries a connection's *connStat in its requests' contexts.
type connKey struct{}

// connStat counts the chat requests of one HTTP connection.
type connStat struct {
	inFlight atomic.Int64
}

// conns counts the connections of the HTTP listener, so that tests and
// benchmarks can see how many calls a client multiplexes on each. Safe for
// concurrent use; lock-free.
type conns struct {
	opened    atomic.Int64
	open      atomic.Int64
	http2     atomic.Int64 // chat requests that came over HTTP/2
	maxPerCon atomic.Int64 // most chat requests in flight at once on one connection
}

// connContext gives every accepted connection its own counts.
func (c *conns) connContext(ctx context.Context, _ net.Conn) context.Context {
	c.opened.Add(1)
	c.open.Add(1)
	return context.WithValue(ctx, connKey{}, &connStat{})
}

// connState counts connections that went away.
func (c *conns) connState(_ net.Conn, st http.ConnState) {
	if st == http.StateClosed || st == http.StateHijacked {
		c.open.Add(-1)
	}
}

// begin counts a chat request on r's connection; the returned func ends it.
// Requests served through ServeHTTP on a listener of someone else's carry
// no connection and are not counted.
func (c *conns) begin(r *http.Request) func() {
	if r.ProtoMajor == 2 {
		c.http2.Add(1)
	}
	cs, ok := r.Context().Value(connKey{}).(*connStat)
	if !ok {
		return func() {}
	}
	n := cs.inFlight.Add(1)
	for m := c.maxPerCon.Load(); n > m && !c.maxPerCon.CompareAndSwap(m, n); m = c.maxPerCon.Load() {
	}
	return func() { cs.inFlight.Add(-1) }
}

func (c *conns) reset() {
	c.opened.Store(0)
	c.http2.Store(0)
	c.maxPerCon.Store(0)
}

// selfSigned makes a certificate for 127.0.0.1, ::1 and localhost, valid
// for a day, and returns it with its PEM encoding (what a client trusts).
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "fakellm"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so that it can be its own root in a client's pool
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemBytes, nil
}
