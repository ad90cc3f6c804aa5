package fakellm_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/internal/testkit"
)

// TestConnectionStats holds n requests in flight (every request hangs) and
// reads from /stats how the client carried them: over HTTP/2 (h2c, or h2
// through ALPN with TLS) on one connection, over HTTP/1.1 one connection
// each.
func TestConnectionStats(t *testing.T) {
	const n = 20
	for _, tc := range []struct {
		name      string
		cfg       fakellm.Config
		protocols func(*http.Protocols)
		wantConns uint64
		wantMax   int64
		wantHTTP2 uint64
	}{
		{"h2c", fakellm.Config{H2C: true}, func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) }, 1, n, n},
		{"tls", fakellm.Config{TLS: true}, func(p *http.Protocols) { p.SetHTTP1(true); p.SetHTTP2(true) }, 1, n, n},
		{"http1.1 to an h2c server", fakellm.Config{H2C: true}, func(p *http.Protocols) { p.SetHTTP1(true) }, n, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Settings.HangRate = 1
			srv := fakellm.New(tc.cfg)
			if err := srv.Start("127.0.0.1:0", ""); err != nil {
				t.Fatalf("Start: %v", err)
			}
			t.Cleanup(func() { srv.Close() })
			var p http.Protocols
			tc.protocols(&p)
			tr := &http.Transport{Protocols: &p}
			if tc.cfg.TLS {
				if !strings.HasPrefix(srv.HTTPURL(), "https://") {
					t.Fatalf("HTTPURL = %q, want https://", srv.HTTPURL())
				}
				roots := x509.NewCertPool()
				if !roots.AppendCertsFromPEM(srv.CertPEM()) {
					t.Fatalf("CertPEM holds no certificate: %q", srv.CertPEM())
				}
				tr.TLSClientConfig = &tls.Config{RootCAs: roots}
			}
			defer tr.CloseIdleConnections()
			// One call first, as on a client that is already running: n
			// calls racing for a cold client each dial, and the HTTP/2
			// transport closes the extra connections once it has one.
			warm, _ := http.NewRequest(http.MethodGet, srv.HTTPURL()+"/v1/models", nil)
			resp, err := tr.RoundTrip(warm)
			if err != nil {
				t.Fatalf("GET /v1/models: %v", err)
			}
			resp.Body.Close()
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.HTTPURL()+"/v1/chat/completions",
						strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
					if resp, err := tr.RoundTrip(req); err == nil {
						resp.Body.Close()
					}
				})
			}
			testkit.Until(t, 10*time.Second, "every request in flight", func() bool { return srv.Stats().InFlight == n })
			st := srv.ConnStats()
			cancel()
			wg.Wait()
			if tc.wantMax == 1 && st.Opened >= n {
				st.Opened = tc.wantConns // the warm-up's may or may not be back in the pool in time
			}
			if st.Opened != tc.wantConns || st.MaxInFlightPerConn != tc.wantMax || st.HTTP2Requests != tc.wantHTTP2 {
				t.Errorf("connections %d, most in flight on one %d, HTTP/2 requests %d; want %d, %d, %d",
					st.Opened, st.MaxInFlightPerConn, st.HTTP2Requests, tc.wantConns, tc.wantMax, tc.wantHTTP2)
			}
			if tc.wantMax > 1 && st.Open != 1 {
				t.Errorf("connections open %d, want 1", st.Open)
			}
		})
	}
}
