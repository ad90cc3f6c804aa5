package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
)

// ClientTLSOptions say how a client verifies an upstream (an OpenAI-compatible
// HTTPS endpoint, another detour) and, for mutual TLS, which certificate it
// presents. The zero value verifies against the system roots.
type ClientTLSOptions struct {
	// CAFile holds a PEM bundle of CAs that replaces the system roots for
	// this upstream (a private CA). Empty means the system roots.
	CAFile string
	// ServerName is the name verified in the upstream's certificate. Empty
	// means the host of the address dialled.
	ServerName string
	// CertFile and KeyFile hold a client certificate and key for upstreams
	// that require mutual TLS. Both or neither.
	CertFile, KeyFile string
}

// ClientTLS returns a client *tls.Config that always verifies the upstream:
// there is deliberately no option to skip verification. Files are read once;
// a rotated CA or client certificate takes a new config (build it again when
// the backend is rebuilt on a config change). Errors name files, never their
// content.
//
// Use it as http.Transport.TLSClientConfig, or with credentials.NewTLS for a
// gRPC client.
func ClientTLS(o ClientTLSOptions) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		b, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream CA: %w", err)
		}
		if cfg.RootCAs, err = certPool(b); err != nil {
			return nil, fmt.Errorf("upstream CA %s: %w", o.CAFile, err)
		}
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("upstream client certificate: set both the certificate and the key file, or neither")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("upstream client certificate %s, %s: %w", o.CertFile, o.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Bearer is gRPC per-call credentials that send "authorization: Bearer
// <token>" metadata, for detourctl and other clients of detour. By default
// it refuses to send the token over a connection without TLS.
//
// A Bearer is an immutable value, safe for concurrent use; printing it shows
// no token.
type Bearer struct {
	// Token is sent with every call.
	Token Secret
	// AllowPlaintext sends the token over connections without TLS too
	// (loopback, tests, a service-mesh sidecar).
	AllowPlaintext bool
}

var _ credentials.PerRPCCredentials = Bearer{}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if b.Token == "" {
		return nil, ErrEmptySecret
	}
	return map[string]string{authorizationKey: "Bearer " + b.Token.Reveal()}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (b Bearer) RequireTransportSecurity() bool { return !b.AllowPlaintext }

// NewToken returns a random bearer token (32 bytes, URL-safe base64) and its
// hex SHA-256 digest, the value to put in the config's token_sha256.
func NewToken() (Secret, string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("token: %w", err)
	}
	tok := Secret(base64.RawURLEncoding.EncodeToString(b))
	return tok, TokenSHA256(tok), nil
}

// TokenSHA256 returns the hex SHA-256 digest of a token, as token_sha256 in
// the config holds it. It is the same as `printf %s TOKEN | sha256sum`.
func TokenSHA256(tok Secret) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}
