package fakellm_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/detour-dev/detour/internal/fakellm"
)

// BenchmarkServeHTTP measures the handler alone, without the network.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"unary", helloBody},
		{"stream", strings.Replace(helloBody, `{`, `{"stream":true,`, 1)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := fakellm.New(fakellm.Config{})
			defer srv.Close()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(bc.body))
					w := httptest.NewRecorder()
					srv.ServeHTTP(w, req)
					if w.Code != http.StatusOK {
						b.Fatalf("status %d", w.Code)
					}
				}
			})
		})
	}
}

// BenchmarkLoopback measures whole calls over loopback, clients included.
func BenchmarkLoopback(b *testing.B) {
	srv := fakellm.New(fakellm.Config{})
	if err := srv.Start("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	defer srv.Close()

	b.Run("http", func(b *testing.B) {
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		url := "http://" + srv.HTTPAddr() + "/v1/chat/completions"
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				resp, err := client.Post(url, "application/json", strings.NewReader(helloBody))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	})
	b.Run("grpc", func(b *testing.B) {
		router, closeConn := dialRouter(b, srv.GRPCAddr())
		defer closeConn()
		req := helloRequest()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := router.Complete(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
