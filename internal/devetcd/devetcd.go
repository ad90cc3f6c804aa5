// Package devetcd runs a single-member etcd server inside the process, on
// loopback, for `detour demo`, tests and benchmarks. It is the real etcd
// (go.etcd.io/etcd/server/v3/embed), tuned to start fast and stop at once; it
// is not meant for production (fsync is off).
//
//	srv, err := devetcd.Start("")        // a temp dir, removed by Close
//	if err != nil { ... }
//	defer srv.Close()
//	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints()})
package devetcd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
)

// readyTimeout bounds how long Start waits for the member to serve.
const readyTimeout = 20 * time.Second

// Option configures a Server.
type Option func(*Server)

// WithTLS serves clients over TLS with the server certificate certFile and
// keyFile, and requires client certificates signed by caFile.
func WithTLS(certFile, keyFile, caFile string) Option {
	return func(s *Server) {
		s.tls = &transport.TLSInfo{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: caFile, ClientCertAuth: true}
	}
}

// WithClientAddr serves clients on addr ("127.0.0.1:2379") instead of a
// free loopback port; Start fails when addr is taken.
func WithClientAddr(addr string) Option {
	return func(s *Server) { s.clientAddr = addr }
}

// Server is one embedded etcd member. Its methods are safe for concurrent
// use; Stop, Restart and Close block until the member has stopped or serves.
type Server struct {
	dir     string
	ownDir  bool
	client  url.URL
	peer    url.URL
	mu      sync.Mutex
	etcd    *embed.Etcd
	servers []*grpc.Server // the member's gRPC servers, to stop them at once
	tls     *transport.TLSInfo
	// clientAddr, when set, is the client address to use (WithClientAddr).
	clientAddr string
}

// Start starts a member with its data in dir, listening for clients and its
// peer on free loopback ports. An empty dir means a new temp dir that Close
// removes.
func Start(dir string, opts ...Option) (*Server, error) {
	s := &Server{dir: dir}
	for _, o := range opts {
		o(s)
	}
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "detour-etcd-")
		if err != nil {
			return nil, fmt.Errorf("etcd data dir: %w", err)
		}
		s.dir, s.ownDir = d, true
	}
	// embed cannot listen on port 0 and report the port, so pick free ports
	// and retry when another process takes one first.
	var err error
	for range 5 {
		c := s.clientAddr
		if c == "" {
			if c, err = freeAddr(); err != nil {
				break
			}
		}
		var p string
		if p, err = freeAddr(); err != nil {
			break
		}
		s.client = url.URL{Scheme: scheme, Host: c}
		s.peer = url.URL{Scheme: "http", Host: p}
		if err = s.start(); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		if s.ownDir {
			os.RemoveAll(s.dir)
		}
		return nil, err
	}
	return s, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (s *Server) start() error {
	s.mu.Lock()
	s.servers = nil
	s.mu.Unlock()
	cfg := embed.NewConfig()
	cfg.Name = "devetcd"
	cfg.Dir = s.dir
	cfg.ListenClientUrls = []url.URL{s.client}
	cfg.AdvertiseClientUrls = []url.URL{s.client}
	cfg.ListenPeerUrls = []url.URL{s.peer}
	cfg.AdvertisePeerUrls = []url.URL{s.peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if _, err := os.Stat(s.dir + "/member"); err == nil {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.BcryptCost = uint(bcrypt.MinCost) // users are added in tests; keep that fast
	if s.tls != nil {
		cfg.ClientTLSInfo = *s.tls
	}
	cfg.EnableGRPCGateway = false
	// The member registers its gRPC servers from its own goroutines.
	cfg.ServiceRegister = func(g *grpc.Server) {
		s.mu.Lock()
		s.servers = append(s.servers, g)
		s.mu.Unlock()
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("start etcd: %w", err)
	case <-time.After(readyTimeout):
		e.Server.Stop()
		e.Close()
		return errors.New("start etcd: not ready after " + readyTimeout.String())
	}
	s.mu.Lock()
	s.etcd = e
	s.mu.Unlock()
	return nil
}

// Endpoints are the client endpoints, for clientv3.Config.Endpoints and
// `detourctl --endpoints`: host:port, or https://host:port with TLS.
func (s *Server) Endpoints() []string {
	if s.tls != nil {
		return []string{s.client.String()}
	}
	return []string{s.client.Host}
}

// Dir is the data directory.
func (s *Server) Dir() string { return s.dir }

// Stop stops the member and keeps its data, so Restart can bring it back on
// the same ports. Open watches and calls are cut at once, as when a real
// member dies. Stopping a stopped member does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	e, servers := s.etcd, s.servers
	s.etcd, s.servers = nil, nil
	s.mu.Unlock()
	if e == nil {
		return
	}
	// embed.Etcd.Close waits up to its request timeout (7s) for watch
	// streams to end; stopping the gRPC servers first cuts them now.
	for _, g := range servers {
		g.Stop()
	}
	e.Close()
}

// Restart starts a stopped member again with the same data and ports.
func (s *Server) Restart() error {
	s.mu.Lock()
	running := s.etcd != nil
	s.mu.Unlock()
	if running {
		return errors.New("etcd is running")
	}
	return s.start()
}

// Close stops the member and removes its data dir when Start created it.
func (s *Server) Close() error {
	s.Stop()
	if s.ownDir {
		return os.RemoveAll(s.dir)
	}
	return nil
}

// StartTest starts a member for one test: data in t.TempDir(), closed when
// the test ends, the test failed when it cannot start.
func StartTest(t testing.TB, opts ...Option) *Server {
	t.Helper()
	srv, err := Start(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}
