// Package auth decides who is calling detour and what they may do: it serves
// TLS and mutual TLS from certificate files that it reloads when they change,
// identifies callers by client certificate or bearer token, maps them to the
// tenants and admins of the live config, enforces a tenant's model allow-list
// and the Admin service's admin-only rule, and keeps secrets out of logs and
// errors. It also holds the recommended gRPC server limits (ServerHardening).
//
// Its pieces, as a server puts them together:
//
//	// Transport: TLS, or mutual TLS with a client CA, reloaded from disk.
//	certs, err := auth.NewServerTLS(auth.ServerTLSOptions{
//		CertFile:     "/etc/detour/tls/tls.crt",
//		KeyFile:      "/etc/detour/tls/tls.key",
//		ClientCAFile: "/etc/detour/client-ca/ca.crt", // "" for TLS only
//		Logger:       log,
//	})
//	if err != nil { ... }
//	defer certs.Close()
//
//	// Identity: who is calling, from the live config's tenants and admins.
//	authn, err := auth.New(auth.Options{
//		Mode:   auth.ModeAny, // off, tls, token or any
//		Config: func() *regions.Config { return current().Config },
//		Logger: log,
//	})
//	if err != nil { ... }
//
//	srv := grpc.NewServer(append(auth.ServerHardening(auth.Hardening{}),
//		grpc.Creds(certs.Credentials()),
//		grpc.ChainUnaryInterceptor(guard, authn.UnaryInterceptor()),
//		grpc.ChainStreamInterceptor(streamGuard, authn.StreamInterceptor()),
//	)...)
//
// Handlers then read the caller with IdentityFrom or TenantFrom; the incoming
// x-detour-tenant metadata is absent or holds the same tenant, and
// authorization metadata is gone. With ModeOff the tenant is whatever
// x-detour-tenant says (checked by ValidTenant) or "default", and the Admin
// service answers loopback callers only.
//
// The package is the one home of the tenant: its metadata key (TenantKey),
// its name rule (ValidTenant, TenantRule) and its place in a context
// (TenantFrom, and WithTenant for a server or test without the
// interceptors). The router charges quotas to TenantFrom(ctx).
//
// Clients send a token with Bearer as per-call credentials:
//
//	conn, err := grpc.NewClient(addr,
//		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
//		grpc.WithPerRPCCredentials(auth.Bearer{Token: tok}))
//
// Secrets travel as Secret, which prints and logs as "[redacted]".
package auth
