package provider

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/regions"
)

func TestOpenAIVerifiesTLS(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"id":"x","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}`))
	}))
	defer ts.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		tls     *regions.BackendTLS
		wantErr bool
	}{
		{name: "system roots refuse a private CA", tls: nil, wantErr: true},
		{name: "the backend's CA file", tls: &regions.BackendTLS{CAFile: ca}},
		{name: "wrong server name", tls: &regions.BackendTLS{CAFile: ca, ServerName: "other.example"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := NewOpenAI(regions.Backend{Name: "tls-1", Endpoint: ts.URL + "/v1", TLS: tt.tls})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			resp, err := o.Complete(context.Background(), userRequest("hi"))
			if (err != nil) != tt.wantErr {
				t.Fatalf("Complete = %v, %v; wantErr %v", resp, err, tt.wantErr)
			}
			if err != nil && breaker.Classify(err) == breaker.Client {
				t.Errorf("a TLS failure classified as a client error: %v", err)
			}
		})
	}
	if _, err := NewOpenAI(regions.Backend{Name: "tls-2", Endpoint: ts.URL, TLS: &regions.BackendTLS{CAFile: "/nonexistent/ca.pem"}}); err == nil {
		t.Error("a missing CA file was accepted")
	}
}
