package regions

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// SelfReferences lists every kind: detour backend (primary or fallback) of
// c whose endpoint is the Router listener at addr, the instance's own: a
// call routed there comes straight back, a routing loop that only the hop
// limit would end. It can be known only once the listener is bound, so
// Validate cannot check it; detour serve does, at start and for every
// later document. local lists the host's own addresses, which reach a
// listener on an unspecified address (":50051"); host is the host's name.
// An endpoint that reaches the instance only through DNS or a Service is
// not detected here (limits.max_hops ends such loops).
func (c *Config) SelfReferences(addr *net.TCPAddr, local []net.IP, host string) []string {
	var out []string
	check := func(where string, b Backend) {
		if b.Kind != KindDetour || !reaches(b.Endpoint, addr, local, host) {
			return
		}
		out = append(out, fmt.Sprintf("%s (%s): kind detour endpoint %q is this instance's own listener %s: every call routed there would come back to it (a routing loop)",
			where, b.Name, b.Endpoint, addr))
	}
	for i, r := range c.Regions {
		for j, b := range r.Backends {
			check(fmt.Sprintf("regions[%d].backends[%d]", i, j), b)
		}
	}
	for i, b := range c.Fallbacks {
		check(fmt.Sprintf("fallbacks[%d]", i), b)
	}
	return out
}

// reaches reports whether a detour endpoint ("host:port" or
// "dns:///host:port") connects to the listener at addr.
func reaches(endpoint string, addr *net.TCPAddr, local []net.IP, hostname string) bool {
	h, p, err := net.SplitHostPort(strings.TrimPrefix(endpoint, "dns:///"))
	if err != nil {
		return false
	}
	if port, err := strconv.Atoi(p); err != nil || port != addr.Port {
		return false
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	anyAddr := addr.IP == nil || addr.IP.IsUnspecified()
	switch {
	case h == "localhost":
		return anyAddr || addr.IP.IsLoopback()
	case hostname != "" && h == strings.ToLower(hostname):
		return anyAddr
	}
	ip := net.ParseIP(h)
	if ip == nil {
		return false
	}
	if anyAddr {
		if ip.IsLoopback() || ip.IsUnspecified() {
			return true
		}
		for _, l := range local {
			if l.Equal(ip) {
				return true
			}
		}
		return false
	}
	// Connecting to 0.0.0.0 or :: reaches the loopback listener.
	return ip.Equal(addr.IP) || (ip.IsUnspecified() && addr.IP.IsLoopback())
}
