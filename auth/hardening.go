package auth

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Recommended gRPC server limits, used for the zero fields of Hardening.
// grpc-go's own defaults are in parentheses; they suit a trusted network,
// not a shared router.
const (
	// DefaultMaxConcurrentStreams bounds the calls in flight on one
	// connection (unlimited). A client over the limit waits for a slot; it
	// does not fail. One grpc-go client connection multiplexes all its
	// calls, so this is per client process, not per call.
	DefaultMaxConcurrentStreams = 1024
	// DefaultMaxHeaderListBytes bounds the metadata of one call (16 MiB):
	// room for a bearer token, tracing headers and a JWT, not for abuse.
	DefaultMaxHeaderListBytes = 16 << 10
	// DefaultConnectionTimeout bounds the TLS and HTTP/2 handshake of a new
	// connection (120s), so that half-open connections cannot pile up.
	DefaultConnectionTimeout = 10 * time.Second
	// DefaultKeepaliveMinTime is the shortest client ping interval allowed
	// (5m); pinging faster gets the connection closed with GOAWAY
	// "too_many_pings". 10s admits the common client settings (10s to 30s).
	DefaultKeepaliveMinTime = 10 * time.Second
	// DefaultKeepaliveTime is how long a connection may be silent before
	// the server pings it to find dead peers (2h).
	DefaultKeepaliveTime = time.Minute
	// DefaultKeepaliveTimeout is how long the server waits for that ping's
	// answer before closing the connection (20s).
	DefaultKeepaliveTimeout = 20 * time.Second
	// DefaultMaxConnectionIdle closes a connection with no call for this
	// long (never); clients reconnect on their next call.
	DefaultMaxConnectionIdle = 15 * time.Minute
	// DefaultMaxConnectionAge makes clients reconnect now and then (never),
	// which spreads them over new replicas and moves them to a rotated
	// server certificate. Each connection's age is jittered by ±10%.
	DefaultMaxConnectionAge = 30 * time.Minute
	// DefaultMaxConnectionAgeGrace is how long calls in flight on a
	// connection past its age may finish (forever). It exceeds the 120s
	// default call deadline, so no completion is cut short.
	DefaultMaxConnectionAgeGrace = 5 * time.Minute
)

// Hardening are the transport limits of a gRPC server. Each zero field takes
// the documented default above; there is no way to turn a limit off.
type Hardening struct {
	// MaxRecvMsgBytes caps one received message. Zero sets no option:
	// server/ already sets grpc.MaxRecvMsgSize from limits.max_request_bytes,
	// and of two such options the later one wins.
	MaxRecvMsgBytes int
	// MaxConcurrentStreams: zero means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// MaxHeaderListBytes: zero means DefaultMaxHeaderListBytes.
	MaxHeaderListBytes uint32
	// ConnectionTimeout: zero means DefaultConnectionTimeout.
	ConnectionTimeout time.Duration
	// KeepaliveMinTime: zero means DefaultKeepaliveMinTime.
	KeepaliveMinTime time.Duration
	// KeepaliveTime and KeepaliveTimeout: zero means the defaults.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// MaxConnectionIdle, MaxConnectionAge, MaxConnectionAgeGrace: zero means
	// the defaults.
	MaxConnectionIdle, MaxConnectionAge, MaxConnectionAgeGrace time.Duration
}

// ServerHardening returns the grpc.ServerOptions that apply h: stream,
// header and handshake limits, and keepalive enforcement that allows pings
// without calls in flight (PermitWithoutStream) but no more often than
// KeepaliveMinTime. Append them to server.Options.GRPCOptions.
func ServerHardening(h Hardening) []grpc.ServerOption {
	def := func(v, d time.Duration) time.Duration {
		if v <= 0 {
			return d
		}
		return v
	}
	if h.MaxConcurrentStreams == 0 {
		h.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if h.MaxHeaderListBytes == 0 {
		h.MaxHeaderListBytes = DefaultMaxHeaderListBytes
	}
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(h.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(h.MaxHeaderListBytes),
		grpc.ConnectionTimeout(def(h.ConnectionTimeout, DefaultConnectionTimeout)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             def(h.KeepaliveMinTime, DefaultKeepaliveMinTime),
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     def(h.MaxConnectionIdle, DefaultMaxConnectionIdle),
			MaxConnectionAge:      def(h.MaxConnectionAge, DefaultMaxConnectionAge),
			MaxConnectionAgeGrace: def(h.MaxConnectionAgeGrace, DefaultMaxConnectionAgeGrace),
			Time:                  def(h.KeepaliveTime, DefaultKeepaliveTime),
			Timeout:               def(h.KeepaliveTimeout, DefaultKeepaliveTimeout),
		}),
	}
	if h.MaxRecvMsgBytes > 0 {
		opts = append(opts, grpc.MaxRecvMsgSize(h.MaxRecvMsgBytes))
	}
	return opts
}
