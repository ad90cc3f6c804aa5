package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/detour-dev/detour/server"
)

// HTTPOptions are serve's settings of the OpenAI-compatible HTTP face.
type HTTPOptions struct {
	// Listen is the face's address; empty means off.
	Listen                                      string
	ReadHeaderTimeout, ReadTimeout, IdleTimeout time.Duration
}

func (o *HTTPOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.Listen, "http-listen", "", "address of the OpenAI-compatible HTTP face (POST /v1/chat/completions, GET /v1/models), with the Router listener's TLS and auth (empty: off)")
	fs.DurationVar(&o.ReadHeaderTimeout, "http-read-header-timeout", server.DefaultReadHeaderTimeout, "HTTP face: time a client has to send a request's headers (slow clients lose the connection)")
	fs.DurationVar(&o.ReadTimeout, "http-read-timeout", server.DefaultReadTimeout, "HTTP face: time a client has to send a whole request, body included")
	fs.DurationVar(&o.IdleTimeout, "http-idle-timeout", server.DefaultIdleTimeout, "HTTP face: an idle keep-alive connection is closed after this long")
}

func (o *HTTPOptions) problems() []string {
	var p []string
	if o.Listen != "" {
		if _, _, err := net.SplitHostPort(o.Listen); err != nil {
			p = append(p, fmt.Sprintf("--http-listen %q: %v", o.Listen, err))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--http-read-header-timeout", o.ReadHeaderTimeout}, {"--http-read-timeout", o.ReadTimeout}, {"--http-idle-timeout", o.IdleTimeout}} {
		if d.v <= 0 {
			p = append(p, d.name+" must be > 0")
		}
	}
	return p
}

// startHTTP serves srv's HTTP face on HTTPOptions.Listen, with the TLS and
// authentication of the Router listener. stop drains it within ctx.
func (m *Main) startHTTP(srv *server.Server, sec *security, log *slog.Logger) (stop func(ctx context.Context), err error) {
	o := m.HTTP
	if o.Listen == "" {
		return func(context.Context) {}, nil
	}
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("http listen: %w", err)
	}
	hopts := server.HTTPOptions{Auth: sec.authn, ReadHeaderTimeout: o.ReadHeaderTimeout, ReadTimeout: o.ReadTimeout, IdleTimeout: o.IdleTimeout}
	scheme := "http"
	if sec.certs != nil {
		hopts.TLS = sec.certs.Config()
		scheme = "https"
	}
	hs := srv.NewHTTP(hopts)
	log.Info("detour http serving", "addr", lis.Addr().String(), "url", scheme+"://"+lis.Addr().String()+"/v1", "transport", sec.transport)
	if m.httpReady != nil {
		m.httpReady(lis.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(lis) }()
	return func(ctx context.Context) {
		hs.Shutdown(ctx)
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			log.Error("http face failed", "err", err)
		}
	}, nil
}

// httpBanner is the demo's lines on the HTTP face at base ("off" when it
// is off).
func httpBanner(base string) string {
	if base == "off" {
		return ""
	}
	return fmt.Sprintf(`
OpenAI-compatible HTTP face: %[1]s (base_url of any OpenAI SDK; no key needed)

  curl -s %[1]s/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"deepseek-chat","messages":[{"role":"user","content":"hello"}]}'
  curl -sN %[1]s/chat/completions -d '{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"tell me a story"}]}'
`, base)
}
