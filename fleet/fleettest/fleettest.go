// Package fleettest starts real Redis servers for the tests of packages that
// share state through Redis (fleet, cache).
//
// Addr returns the Redis the environment provides in DETOUR_TEST_REDIS_ADDR
// (set by .ci/services/redis.sh) or starts a private one. Start always starts
// a private redis-server, for tests that kill, pause or restart it. Both
// skip the test when no Redis is available, saying how to get one.
package fleettest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvAddr names the environment variable holding the address of a Redis the
// tests may use.
const EnvAddr = "DETOUR_TEST_REDIS_ADDR"

// readyTimeout bounds the wait for a started redis-server.
const readyTimeout = 10 * time.Second

// Addr returns the address of a Redis for t: DETOUR_TEST_REDIS_ADDR when set,
// otherwise a private redis-server stopped when t ends. Tests sharing a Redis
// must keep their keys apart: see Prefix.
func Addr(t testing.TB) string {
	t.Helper()
	if a := os.Getenv(EnvAddr); a != "" {
		return a
	}
	return Start(t).Addr
}

// Prefix returns a key prefix no other test uses.
func Prefix(t testing.TB) string {
	var b [6]byte
	rand.Read(b[:])
	return "detourtest:" + hex.EncodeToString(b[:]) + ":"
}

// Server is a private redis-server process on a loopback port, with no
// persistence. Its methods are safe for concurrent use.
type Server struct {
	Addr string

	t    testing.TB
	port string
	dir  string
	args []string
	tls  bool

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts a private redis-server on a free loopback port with the
// extra command-line args (e.g. "--requirepass", "x"), and stops it when t
// ends. It skips t when redis-server is not on PATH.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return start(t, false, args)
}

// StartTLS starts a private redis-server like Start that accepts only TLS,
// with a certificate for 127.0.0.1 signed by a fresh CA. It returns the
// server and the CA's PEM file.
func StartTLS(t testing.TB, args ...string) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	args = append([]string{"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"}, args...)
	return start(t, true, args), ca
}

func start(t testing.TB, tls bool, args []string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skipf("redis-server not found on PATH: install it (apt-get install redis-server) or set %s=host:port to run the Redis tests", EnvAddr)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", port), t: t, port: port, dir: t.TempDir(), args: args, tls: tls}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	ports := []string{"--port", s.port}
	if s.tls {
		ports = []string{"--port", "0", "--tls-port", s.port}
	}
	args := append(append(ports,
		"--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
		"--enable-debug-command", "local",
	), s.args...)
	cmd := exec.Command("redis-server", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var log strings.Builder
		for sc.Scan() {
			line := sc.Text()
			log.WriteString(line + "\n")
			if strings.Contains(line, "Ready to accept connections") {
				ready <- nil
				io.Copy(io.Discard, out) // keep the pipe drained until exit
				return
			}
		}
		ready <- fmt.Errorf("redis-server exited before it was ready:\n%s", log.String())
	}()
	tm := time.NewTimer(readyTimeout)
	defer tm.Stop()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			s.t.Fatal(err)
		}
	case <-tm.C:
		cmd.Process.Kill()
		cmd.Wait()
		s.t.Fatalf("redis-server on %s not ready within %v", s.Addr, readyTimeout)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
}

// Kill kills the server (SIGKILL) and waits for it to exit. Killing a
// server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	cmd.Wait()
}

// Restart starts the server again on the same port, empty, after Kill.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Pause stops the server's process (SIGSTOP): connections stay open but
// nothing is answered, like a Redis stuck on a slow command.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.cmd.Process.Signal(sig)
	}
}
