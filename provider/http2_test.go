package provider

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/regions"
)

// TestHTTP2Multiplexes holds 50 calls in flight at once to fakellm and
// reads from its connection counts how the client carried them: over
// HTTP/2 (h2c, or h2 negotiated through ALPN over TLS) all on one
// connection; with http2 off, or auto on an http:// endpoint, over HTTP/1.1
// one connection each. Calls answer in full over each.
func TestHTTP2Multiplexes(t *testing.T) {
	const n = 50
	for _, tc := range []struct {
		name    string
		fake    fakellm.Config
		http2   string
		wantH2  bool
		wantMax int64
	}{
		{name: "h2c", fake: fakellm.Config{H2C: true}, http2: regions.HTTP2H2C, wantH2: true, wantMax: n},
		{name: "tls auto", fake: fakellm.Config{TLS: true}, http2: "", wantH2: true, wantMax: n},
		{name: "tls off", fake: fakellm.Config{TLS: true}, http2: regions.HTTP2Off, wantMax: 1},
		{name: "auto on http", fake: fakellm.Config{H2C: true}, http2: regions.HTTP2Auto, wantMax: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakellm.New(tc.fake)
			if err := srv.Start("127.0.0.1:0", ""); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			b := regions.Backend{Name: "fake", Endpoint: srv.HTTPURL() + "/v1", Connections: &regions.BackendConnections{HTTP2: tc.http2}}
			if tc.fake.TLS {
				ca := filepath.Join(t.TempDir(), "fake.crt")
				if err := os.WriteFile(ca, srv.CertPEM(), 0o600); err != nil {
					t.Fatal(err)
				}
				b.TLS = &regions.BackendTLS{CAFile: ca}
			}
			o, err := NewOpenAI(b)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { o.Close() })

			// A first call opens the connection, as on a running replica.
			if _, err := o.Complete(t.Context(), userRequest("hi")); err != nil {
				t.Fatalf("first call: %v", err)
			}
			if err := srv.SetSettings(fakellm.Settings{Latency: time.Hour}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					if i%2 == 0 {
						o.Complete(ctx, userRequest("hi"))
						return
					}
					if st, err := o.Stream(ctx, userRequest("hi")); err == nil {
						st.Recv()
						st.Close()
					}
				})
			}
			testkit.Until(t, 10*time.Second, "every call in flight", func() bool { return srv.Stats().InFlight == n })
			cs := srv.ConnStats()
			cancel()
			wg.Wait()
			if cs.MaxInFlightPerConn != tc.wantMax {
				t.Errorf("most calls in flight on one connection: %d, want %d (%+v)", cs.MaxInFlightPerConn, tc.wantMax, cs)
			}
			if tc.wantH2 && (cs.Opened != 1 || cs.HTTP2Requests != n+1) {
				t.Errorf("connections opened %d, HTTP/2 requests %d; want 1 and %d (%+v)", cs.Opened, cs.HTTP2Requests, n+1, cs)
			}
			if !tc.wantH2 && (cs.Opened < n || cs.HTTP2Requests != 0) {
				t.Errorf("connections opened %d, HTTP/2 requests %d; want at least %d and 0 (%+v)", cs.Opened, cs.HTTP2Requests, n, cs)
			}

			// Answers arrive whole over the same pool.
			if err := srv.SetSettings(fakellm.Settings{}); err != nil {
				t.Fatal(err)
			}
			resp, err := o.Complete(t.Context(), userRequest("hello there"))
			if err != nil || !strings.Contains(resp.GetContent(), "hello there") {
				t.Fatalf("Complete = %v, %v", resp, err)
			}
			st, err := o.Stream(t.Context(), userRequest("hello there"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var text strings.Builder
			for {
				ch, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("Recv: %v", err)
				}
				text.WriteString(ch.GetDelta())
			}
			if !strings.Contains(text.String(), "hello there") {
				t.Errorf("streamed %q", text.String())
			}
			if tc.wantH2 {
				if got := srv.ConnStats().Opened; got != 1 {
					t.Errorf("connections opened after the answers: %d, want still 1", got)
				}
			}
		})
	}
}

// TestTransportFromConnections checks the pool each connections block
// builds: the protocols offered and the caps.
func TestTransportFromConnections(t *testing.T) {
	for _, tc := range []struct {
		name              string
		endpoint          string
		conns             *regions.BackendConnections
		h1, h2, h2c       bool
		maxConns, maxIdle int
		idle, ping        time.Duration
	}{
		{name: "no block", endpoint: "https://h/v1", h1: true, h2: true, maxIdle: 256, idle: 90 * time.Second},
		{name: "h2c caps dials at 32", endpoint: "http://h/v1", conns: &regions.BackendConnections{HTTP2: regions.HTTP2H2C},
			h2c: true, maxConns: 32, maxIdle: 256, idle: 90 * time.Second},
		{name: "off, every field set", endpoint: "https://h/v1",
			conns: &regions.BackendConnections{HTTP2: regions.HTTP2Off, MaxConns: 8, MaxIdleConns: 4, IdleTimeout: regions.Duration(time.Minute), PingTimeout: regions.Duration(15 * time.Second)},
			h1:    true, maxConns: 8, maxIdle: 4, idle: time.Minute, ping: 15 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := newTransport(regions.Backend{Name: "b", Endpoint: tc.endpoint, Connections: tc.conns}, nil)
			if err != nil {
				t.Fatal(err)
			}
			p := tr.Protocols
			if p.HTTP1() != tc.h1 || p.HTTP2() != tc.h2 || p.UnencryptedHTTP2() != tc.h2c {
				t.Errorf("protocols %v, want HTTP1 %v, HTTP2 %v, UnencryptedHTTP2 %v", p, tc.h1, tc.h2, tc.h2c)
			}
			if tr.MaxConnsPerHost != tc.maxConns || tr.MaxIdleConnsPerHost != tc.maxIdle || tr.IdleConnTimeout != tc.idle ||
				tr.HTTP2.SendPingTimeout != tc.ping || tr.HTTP2.PingTimeout != tc.ping {
				t.Errorf("max conns %d, max idle %d, idle %v, ping %v/%v; want %d, %d, %v, %v", tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost,
					tr.IdleConnTimeout, tr.HTTP2.SendPingTimeout, tr.HTTP2.PingTimeout, tc.maxConns, tc.maxIdle, tc.idle, tc.ping)
			}
		})
	}
	if _, err := newTransport(regions.Backend{Name: "b", Endpoint: "https://h/v1", Connections: &regions.BackendConnections{HTTP2: regions.HTTP2H2C}}, nil); err == nil {
		t.Error("h2c on an https endpoint was accepted")
	}
}
