package regions

import (
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestSelfReferences: a kind: detour endpoint that is the instance's own
// listener, written any way that reaches it.
func TestSelfReferences(t *testing.T) {
	local := []net.IP{net.ParseIP("10.1.2.3"), net.ParseIP("fd00::3")}
	loopback := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 50051}
	anyAddr := &net.TCPAddr{IP: net.IPv4zero, Port: 50051}
	tests := []struct {
		name     string
		endpoint string
		kind     string
		addr     *net.TCPAddr
		want     bool
	}{
		{"same address", "127.0.0.1:50051", KindDetour, loopback, true},
		{"localhost", "localhost:50051", KindDetour, loopback, true},
		{"dns scheme", "dns:///LOCALHOST.:50051", KindDetour, loopback, true},
		{"unspecified target", "0.0.0.0:50051", KindDetour, loopback, true},
		{"other port", "127.0.0.1:50052", KindDetour, loopback, false},
		{"other loopback address", "127.0.0.2:50051", KindDetour, loopback, false},
		{"any-address listener, loopback", "[::1]:50051", KindDetour, anyAddr, true},
		{"any-address listener, own interface", "10.1.2.3:50051", KindDetour, anyAddr, true},
		{"any-address listener, own v6 interface", "[fd00::3]:50051", KindDetour, anyAddr, true},
		{"any-address listener, host name", "node-7:50051", KindDetour, anyAddr, true},
		{"any-address listener, other host", "10.1.2.4:50051", KindDetour, anyAddr, false},
		{"service name", "detour.eu.svc:50051", KindDetour, anyAddr, false},
		{"openai kind", "http://127.0.0.1:50051/v1", KindOpenAI, loopback, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Regions: []Region{{Name: "a", Backends: []Backend{{Name: "b", Kind: tt.kind, Endpoint: tt.endpoint}}}}}
			got := c.SelfReferences(tt.addr, local, "node-7")
			if diff := cmp.Diff(len(got) > 0, tt.want); diff != "" {
				t.Errorf("SelfReferences(%q on %v) = %q (-got +want):\n%s", tt.endpoint, tt.addr, got, diff)
			}
		})
	}
	c := &Config{Fallbacks: []Backend{{Name: "fb", Kind: KindDetour, Endpoint: "127.0.0.1:50051"}}}
	if got := c.SelfReferences(loopback, nil, ""); len(got) != 1 || got[0][:13] != "fallbacks[0] " {
		t.Errorf("fallback self-reference: %q", got)
	}
}
