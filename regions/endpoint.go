package regions

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Endpoints that detour refuses unless a backend sets AllowUnsafeEndpoint:
// anyone who can write the document could otherwise aim detour's API keys,
// and the requests that carry them, at a cloud's instance metadata service
// (which hands out the host's own credentials), or keep a secret in the
// document itself.
var (
	// metadataHosts are the names of instance metadata services.
	metadataHosts = map[string]bool{
		"metadata.google.internal":   true, // GCP
		"metadata.goog":              true, // GCP
		"metadata":                   true, // GCP, short
		"instance-data":              true, // AWS
		"instance-data.ec2.internal": true, // AWS
		"metadata.azure.internal":    true,
		"metadata.tencentyun.com":    true,
	}
	// metadataAddrs are metadata services outside the link-local ranges.
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
		netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	}
)

// unsafeEndpoint says why a backend of kind may not use endpoint without
// AllowUnsafeEndpoint, or returns "". It never quotes credentials.
func unsafeEndpoint(kind, endpoint string) string {
	var host string
	if kind == KindDetour {
		hp := strings.TrimPrefix(endpoint, "dns:///")
		if strings.Contains(hp, "@") {
			return "endpoint carries credentials (user:password@): keep secrets out of the document, in api_key_env or api_key_file"
		}
		h, _, err := net.SplitHostPort(hp)
		if err != nil {
			return ""
		}
		host = h
	} else {
		u, err := url.Parse(endpoint)
		if err != nil {
			return ""
		}
		if u.User != nil {
			return "endpoint URL carries credentials (user:password@): keep secrets out of the document, in api_key_env or api_key_file"
		}
		host = u.Hostname()
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i] // an IPv6 zone
	}
	if metadataHosts[host] {
		return "endpoint host " + host + " is a cloud instance metadata service"
	}
	ip, ok := hostIP(host)
	if !ok {
		return ""
	}
	ip = ip.Unmap()
	for _, m := range metadataAddrs {
		if ip == m {
			return "endpoint address " + ip.String() + " is a cloud instance metadata service"
		}
	}
	if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
		return "endpoint address " + ip.String() + " is link-local (169.254.0.0/16, fe80::/10), where cloud instance metadata services answer"
	}
	return ""
}

// hostIP reads host as an IP address, including the forms a C resolver
// also accepts for IPv4 (inet_aton: "2852039166", "0xa9.0xfe.0xa9.0xfe",
// "169.254.43518").
func hostIP(host string) (netip.Addr, bool) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, true
	}
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var nums []uint64
	for _, p := range parts {
		n, ok := atonPart(p)
		if !ok {
			return netip.Addr{}, false
		}
		nums = append(nums, n)
	}
	// The last part fills the bytes the others leave.
	var v uint64
	for i, n := range nums[:len(nums)-1] {
		if n > 0xff {
			return netip.Addr{}, false
		}
		v |= n << (8 * (3 - i))
	}
	last := nums[len(nums)-1]
	if last >= 1<<(8*(5-len(nums))) {
		return netip.Addr{}, false
	}
	v |= last
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// atonPart parses one part of an inet_aton address: decimal, octal with a
// leading 0, or hexadecimal with 0x.
func atonPart(p string) (uint64, bool) {
	base := 10
	switch {
	case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
		p, base = p[2:], 16
	case len(p) > 1 && p[0] == '0':
		p, base = p[1:], 8
	}
	if p == "" || strings.ContainsAny(p, "_+-") {
		return 0, false
	}
	n, err := strconv.ParseUint(p, base, 32)
	return n, err == nil
}
