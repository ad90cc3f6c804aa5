package provider

import (
	"crypto/tls"
	"fmt"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/regions"
)

// clientTLS builds the verified TLS config of a backend with a tls block.
func clientTLS(b regions.Backend) (*tls.Config, error) {
	cfg, err := auth.ClientTLS(auth.ClientTLSOptions{
		CAFile: b.TLS.CAFile, ServerName: b.TLS.ServerName, CertFile: b.TLS.CertFile, KeyFile: b.TLS.KeyFile,
	})
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", b.Name, err)
	}
	return cfg, nil
}
