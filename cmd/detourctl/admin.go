package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// adminConn says how to reach an instance's detour.v1.Admin service: its
// address, TLS, and the admin credential (a client certificate, a bearer
// token, or both). The zero value dials plaintext without a credential,
// which a detour with --auth=off answers from loopback only.
type adminConn struct {
	addr string
	// caFile, certFile, keyFile and serverName: any of them turns TLS on.
	caFile, certFile, keyFile string
	serverName                string
	tokenFile                 string
}

func (a *adminConn) register(fs *flag.FlagSet) {
	fs.StringVar(&a.addr, "addr", a.addr, "address of the instance's detour.v1.Admin service (--listen, or --admin-listen when set)")
	fs.StringVar(&a.caFile, "tls-ca", a.caFile, "Admin: CA bundle that verifies detour's certificate (turns TLS on; empty with TLS: the system roots)")
	fs.StringVar(&a.certFile, "tls-cert", a.certFile, "Admin: client certificate for mutual TLS (turns TLS on)")
	fs.StringVar(&a.keyFile, "tls-key", a.keyFile, "Admin: client key for mutual TLS")
	fs.StringVar(&a.serverName, "tls-server-name", a.serverName, "Admin: name to verify in detour's certificate (default: the host of --addr; turns TLS on)")
	fs.StringVar(&a.tokenFile, "token-file", a.tokenFile, "Admin: file holding an admin's bearer token")
}

func (a *adminConn) tls() bool {
	return a.caFile != "" || a.certFile != "" || a.keyFile != "" || a.serverName != ""
}

// check reports a combination of flags that cannot work, before anything is
// read or dialled.
func (a *adminConn) check() error {
	switch {
	case (a.certFile == "") != (a.keyFile == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case a.tokenFile != "" && !a.tls() && !loopback(a.addr):
		return fmt.Errorf("refusing to send the --token-file token in the clear to %s: add --tls-ca (TLS), or reach detour on a loopback address", a.addr)
	}
	return nil
}

// dial connects to the Admin service. The connection is lazy: a wrong
// address or TLS setting shows in the first call's error.
func (a *adminConn) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if a.tls() {
		cfg, err := auth.ClientTLS(auth.ClientTLSOptions{CAFile: a.caFile, ServerName: a.serverName, CertFile: a.certFile, KeyFile: a.keyFile})
		if err != nil {
			return nil, fmt.Errorf("--tls-ca, --tls-cert, --tls-key: %w", err)
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if a.tokenFile != "" {
		tok, err := auth.ReadSecretFile(a.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		// check allowed plaintext only to loopback.
		opts = append(opts, grpc.WithPerRPCCredentials(auth.Bearer{Token: tok, AllowPlaintext: !a.tls()}))
	}
	conn, err := grpc.NewClient(a.addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("admin %s: %w", a.addr, err)
	}
	return conn, nil
}

// loopback reports whether a gRPC target is on this machine: a loopback IP,
// localhost, or a Unix socket. detour accepts a token without TLS from such
// a peer only.
func loopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if strings.Contains(target, "://") { // dns:///host:port, passthrough:///host:port
		target = target[strings.LastIndex(target, "/")+1:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// adminError is a failed Admin call, explained in terms of detourctl's
// flags. It unwraps to the gRPC status error.
type adminError struct {
	addr, op string
	hint     string
	err      error
}

func (e *adminError) Error() string {
	st := status.Convert(e.err)
	msg := fmt.Sprintf("admin %s: %s: %s: %s", e.addr, e.op, codeWords(st.Code()), st.Message())
	if st.Code() == codes.Unavailable && refused(e.err) {
		// grpc-go's "connection error: desc = transport: Error while
		// dialing: dial tcp ...: connect: connection refused", shortened.
		msg = fmt.Sprintf("admin %s: %s: connection refused", e.addr, e.op)
	}
	if e.hint != "" {
		msg += "\n  hint: " + e.hint
	}
	return msg
}

func (e *adminError) Unwrap() error { return e.err }

// explain wraps the error of an Admin call op with what to do about it.
func (a *adminConn) explain(op string, err error) error {
	var hint string
	switch status.Code(err) {
	case codes.Unauthenticated:
		hint = "detour wants a credential it knows: an admin's --token-file, or --tls-cert and --tls-key (mutual TLS)"
		if a.tokenFile != "" || a.certFile != "" {
			hint = "detour did not accept this credential: check it is listed under the config's admins (token_sha256 or identities) and that detour's --auth takes it (tokens: token or any; certificates: tls or any)"
		}
	case codes.PermissionDenied:
		hint = "the credential is valid but not an admin's: detour.v1.Admin answers only the principals under the config's admins"
		if a.tokenFile == "" && a.certFile == "" {
			hint = "with --auth=off detour answers Admin calls from loopback only; otherwise give an admin's --token-file or --tls-cert and --tls-key"
		}
	case codes.Unimplemented:
		if strings.Contains(status.Convert(err).Message(), "unknown service "+detourv1.Admin_ServiceDesc.ServiceName) {
			hint = a.addr + " serves no detour.v1.Admin: when detour runs with --admin-listen (e.g. 127.0.0.1:50052), the Admin service is there only; point --addr at that address"
		}
	case codes.Unavailable:
		switch {
		case refused(err):
			hint = "nothing listens at " + a.addr + ": check --addr (detour's --listen, or its --admin-listen when set) and that detour is running"
		case !a.tls():
			hint = "if detour's listener uses TLS, add --tls-ca (and --tls-cert, --tls-key for mutual TLS)"
		case a.certFile == "":
			hint = "if detour requires client certificates (mutual TLS), add --tls-cert and --tls-key; if its listener is plaintext, drop the --tls flags"
		default:
			hint = "check --tls-ca matches detour's certificate, that detour trusts the CA of --tls-cert, and that the listener uses TLS"
		}
	}
	return &adminError{addr: a.addr, op: op, hint: hint, err: err}
}

// refused reports whether a failed call's connection was refused: nothing
// listens at the address, which no TLS setting changes.
func refused(err error) bool {
	return strings.Contains(status.Convert(err).Message(), "connection refused")
}

// codeWords spells a gRPC code as words: "permission denied".
func codeWords(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}
