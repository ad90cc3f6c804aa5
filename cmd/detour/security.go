package main

import (
	"context"
	"flag"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/regions"
)

// SecurityOptions are the TLS and authentication settings of serve.
type SecurityOptions struct {
	TLSCert, TLSKey string
	// TLSClientCA, when set, asks callers for a client certificate verified
	// against this bundle (mutual TLS).
	TLSClientCA string
	// TLSReload is how often certificate files are checked for changes.
	TLSReload time.Duration
	// Auth says which credentials identify a caller.
	Auth auth.Mode
}

func (o *SecurityOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.TLSCert, "tls-cert", "", "server certificate (PEM); with --tls-key turns TLS on for every listener")
	fs.StringVar(&o.TLSKey, "tls-key", "", "server private key (PEM)")
	fs.StringVar(&o.TLSClientCA, "tls-client-ca", "", "CA bundle to verify client certificates against (mutual TLS)")
	fs.DurationVar(&o.TLSReload, "tls-reload-interval", auth.DefaultPollInterval, "how often certificate files are re-read when changed")
	fs.TextVar(&o.Auth, "auth", auth.ModeOff, "who may call: off (anyone; tenant from x-detour-tenant), tls (client certificate), token (bearer token), any (either)")
}

func (o *SecurityOptions) problems() []string {
	var p []string
	if (o.TLSCert == "") != (o.TLSKey == "") {
		p = append(p, "--tls-cert and --tls-key go together")
	}
	if o.TLSClientCA != "" && o.TLSCert == "" {
		p = append(p, "--tls-client-ca needs --tls-cert and --tls-key")
	}
	if o.Auth == auth.ModeTLS && o.TLSClientCA == "" {
		p = append(p, "--auth=tls needs --tls-client-ca")
	}
	return p
}

// security is the running TLS reloader and authenticator of serve.
type security struct {
	certs     *auth.ServerTLS // nil without TLS
	authn     *auth.Authenticator
	transport string // for the start-up log
}

// startSecurity loads the certificates and builds the authenticator over the
// live config.
func startSecurity(o SecurityOptions, config func() *regions.Config, log *slog.Logger) (*security, error) {
	s := &security{}
	if o.TLSCert != "" {
		certs, err := auth.NewServerTLS(auth.ServerTLSOptions{
			CertFile: o.TLSCert, KeyFile: o.TLSKey, ClientCAFile: o.TLSClientCA,
			OptionalClientCert: o.Auth != auth.ModeTLS, PollInterval: o.TLSReload, Logger: log,
		})
		if err != nil {
			return nil, err
		}
		s.certs = certs
	}
	authn, err := auth.New(auth.Options{Mode: o.Auth, Config: config, Logger: log})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.authn = authn
	transport := "plaintext: anyone who can reach the port can call (local use only)"
	switch {
	case s.certs != nil && o.TLSClientCA != "":
		transport = "mutual TLS"
	case s.certs != nil:
		transport = "TLS"
	}
	level := slog.LevelInfo
	if s.certs == nil || o.Auth == auth.ModeOff {
		level = slog.LevelWarn
	}
	s.transport = transport
	log.Log(context.Background(), level, "security", "transport", transport, "auth", o.Auth.String())
	return s, nil
}

// serverOptions are the gRPC options of every listener: credentials,
// hardening limits, and authentication before the handlers.
func (s *security) serverOptions() []grpc.ServerOption {
	opts := auth.ServerHardening(auth.Hardening{})
	if s.certs != nil {
		opts = append(opts, grpc.Creds(s.certs.Credentials()))
	}
	return append(opts,
		grpc.ChainUnaryInterceptor(s.authn.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(s.authn.StreamInterceptor()))
}

// Close stops the certificate reloader.
func (s *security) Close() {
	if s.certs != nil {
		s.certs.Close()
	}
}
