package fakellm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("fakellm: server closed")

// Config describes a Server. The zero Config is a valid backend named
// "fakellm" in region "local" that answers everything at once.
type Config struct {
	// Name names the backend in /stats, in the owned_by of /v1/models, in
	// the X-Fakellm-Name header and in the served_by of gRPC answers.
	// Empty means "fakellm".
	Name string
	// Region is echoed in every answer ("[region] echo: ..."), in /stats,
	// in the X-Fakellm-Region header and in served_by. Empty means "local".
	Region string
	// Models lists the models GET /v1/models reports. Nil means
	// deepseek-chat and deepseek-reasoner. Requests may name any model: the
	// answer echoes it.
	Models []string
	// Settings are the initial knobs; SetSettings and POST /control change
	// them later.
	Settings Settings
	// H2C serves HTTP/2 without TLS (prior knowledge, as a client configured
	// for h2c speaks it) on the plaintext HTTP listener, beside HTTP/1.1.
	H2C bool
	// TLS serves the HTTP API over TLS with a certificate made at Start for
	// 127.0.0.1, ::1 and localhost (see CertPEM), offering HTTP/2 and
	// HTTP/1.1 through ALPN.
	TLS bool
	// MaxStreams is the SETTINGS_MAX_CONCURRENT_STREAMS of its HTTP/2
	// connections: the most requests a client may have in flight on one.
	// Zero means net/http's default (250 at the time of writing).
	MaxStreams int
}

// Validate reports what is wrong with c, or nil.
func (c Config) Validate() error {
	var errs []error
	for _, m := range c.Models {
		if m == "" {
			errs = append(errs, errors.New("models: empty model name"))
			break
		}
	}
	if c.MaxStreams < 0 {
		errs = append(errs, fmt.Errorf("max streams %d must be >= 0", c.MaxStreams))
	}
	errs = append(errs, c.Settings.Validate())
	return errors.Join(errs...)
}

// Server is a simulated DeepSeek-like LLM backend. It serves the OpenAI chat
// completions API over HTTP (as an http.Handler, or on its own listener
// after Start) and detour.v1.Router over gRPC, with latency, busy answers,
// a QPS limit and faults set by its Settings.
//
// A Server is safe for concurrent use. Its hot path takes no lock: settings
// are an atomic pointer to an immutable value and counters are atomic.
// Requests may block for the configured latency, pacing or hang, until
// their client goes away or Close is called.
type Server struct {
	name, region string
	modelsBody   []byte
	nameHdr      []string // header values, shared and never modified
	regionHdr    []string
	servedBy     *detourv1.ServedBy // read-only, shared by every gRPC answer

	snap      atomic.Pointer[snapshot]
	controlMu sync.Mutex // serializes read-modify-write of the settings
	stats     counters
	conns     conns
	mux       *http.ServeMux

	h2c, useTLS bool
	maxStreams  int

	quit     chan struct{} // closed by Close: releases waiting requests
	handlers sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	closed    bool
	httpSrv   *http.Server
	grpcSrv   *grpc.Server
	httpAddr  string
	grpcAddr  string
	certPEM   []byte
	serving   sync.WaitGroup // the Serve goroutines
	serveErrs []error
}

// New returns a Server for cfg that serves nothing until Start, or until it
// is mounted as an http.Handler. cfg must be valid (see Config.Validate):
// New panics otherwise, as for a programming error; validate untrusted
// input first.
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("fakellm: invalid config: %v", err))
	}
	if cfg.Name == "" {
		cfg.Name = "fakellm"
	}
	if cfg.Region == "" {
		cfg.Region = "local"
	}
	if cfg.Models == nil {
		cfg.Models = []string{"deepseek-chat", "deepseek-reasoner"}
	}
	s := &Server{
		name:       cfg.Name,
		region:     cfg.Region,
		modelsBody: modelsBody(cfg.Name, cfg.Models),
		nameHdr:    []string{cfg.Name},
		regionHdr:  []string{cfg.Region},
		servedBy: &detourv1.ServedBy{
			Region:  cfg.Region,
			Backend: cfg.Name,
			Kind:    detourv1.ProviderKind_PROVIDER_KIND_DETOUR,
		},
		quit:       make(chan struct{}),
		h2c:        cfg.H2C,
		useTLS:     cfg.TLS,
		maxStreams: cfg.MaxStreams,
	}
	s.snap.Store(newSnapshot(cfg.Settings, nil))
	// Held until Close, so that handlers' Add never starts from zero while
	// Close waits.
	s.handlers.Add(1)
	s.mux = s.routes()
	return s
}

// Settings returns the current settings.
func (s *Server) Settings() Settings { return s.snap.Load().Settings }

// SetSettings replaces the settings, for HTTP and gRPC requests alike,
// from the next request on. It refuses invalid settings (see
// Settings.Validate) and then changes nothing. The QPS limiter keeps its
// state unless QPS or Burst change.
func (s *Server) SetSettings(st Settings) error {
	if err := st.Validate(); err != nil {
		return err
	}
	s.controlMu.Lock()
	defer s.controlMu.Unlock()
	s.snap.Store(newSnapshot(st, s.snap.Load()))
	return nil
}

// Stats returns the request counts since New or the last ResetStats.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ConnStats returns the counts of the HTTP listener's connections since
// Start or the last ResetStats.
func (s *Server) ConnStats() ConnStats {
	return ConnStats{
		Opened:             uint64(s.conns.opened.Load()),
		Open:               s.conns.open.Load(),
		HTTP2Requests:      uint64(s.conns.http2.Load()),
		MaxInFlightPerConn: s.conns.maxPerCon.Load(),
	}
}

// Usage returns the tokens spent since New or the last ResetStats.
func (s *Server) Usage() Usage { return s.stats.usage() }

// ResetStats zeroes the counts (not InFlight, nor ConnStats.Open) and the
// Usage.
func (s *Server) ResetStats() {
	s.stats.reset()
	s.conns.reset()
}

// Start listens on httpAddr for the HTTP API and on grpcAddr for the
// detour.v1.Router service, and serves them in the background until Close.
// Either address may be empty to serve only the other; port 0 picks a free
// port (see HTTPAddr, GRPCAddr). An address without a host, such as ":0",
// listens on 127.0.0.1, not on every interface. Start may be called once.
func (s *Server) Start(httpAddr, grpcAddr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.httpSrv != nil || s.grpcSrv != nil:
		return errors.New("fakellm: already started")
	case httpAddr == "" && grpcAddr == "":
		return errors.New("fakellm: no address to serve on")
	}
	var hl, gl net.Listener
	if httpAddr != "" {
		l, err := listen(httpAddr)
		if err != nil {
			return fmt.Errorf("fakellm: http: %w", err)
		}
		hl = l
	}
	if grpcAddr != "" {
		l, err := listen(grpcAddr)
		if err != nil {
			if hl != nil {
				hl.Close()
			}
			return fmt.Errorf("fakellm: grpc: %w", err)
		}
		gl = l
	}
	if hl != nil {
		srv, err := s.newHTTPServer()
		if err != nil {
			hl.Close()
			if gl != nil {
				gl.Close()
			}
			return fmt.Errorf("fakellm: http: %w", err)
		}
		if srv.TLSConfig != nil {
			hl = tls.NewListener(hl, srv.TLSConfig)
		}
		s.httpSrv = srv
		s.httpAddr = hl.Addr().String()
		s.serving.Go(func() {
			if err := srv.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				s.serveFailed(fmt.Errorf("fakellm: http: %w", err))
			}
		})
	}
	if gl != nil {
		// WaitForHandlers: Stop returns only once every handler returned.
		s.grpcSrv = grpc.NewServer(grpc.WaitForHandlers(true))
		detourv1.RegisterRouterServer(s.grpcSrv, routerService{s: s})
		s.grpcAddr = gl.Addr().String()
		srv := s.grpcSrv
		s.serving.Go(func() {
			if err := srv.Serve(gl); err != nil {
				s.serveFailed(fmt.Errorf("fakellm: grpc: %w", err))
			}
		})
	}
	return nil
}

// newHTTPServer is the server of the HTTP API: HTTP/1.1, with HTTP/2 as
// the Config says, and counts of its connections.
func (s *Server) newHTTPServer() (*http.Server, error) {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(s.h2c)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		Protocols:         &p,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: s.maxStreams},
		ConnContext:       s.conns.connContext,
		ConnState:         s.conns.connState,
	}
	if s.useTLS {
		p.SetHTTP2(true)
		cert, certPEM, err := selfSigned()
		if err != nil {
			return nil, err
		}
		s.certPEM = certPEM
		// Serve on a TLS listener does not set up ALPN itself (ServeTLS
		// would): offer h2 first, as a provider does.
		srv.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"h2", "http/1.1"},
			MinVersion:   tls.VersionTLS12,
		}
	}
	return srv, nil
}

// CertPEM returns the PEM certificate of the TLS listener, which a client
// trusts as its root (it is self-signed), or nil without Config.TLS or
// before Start.
func (s *Server) CertPEM() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.certPEM
}

// HTTPURL returns the base URL of the HTTP API ("https://127.0.0.1:PORT"
// with TLS), or "" if it does not serve one.
func (s *Server) HTTPURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.httpAddr == "":
		return ""
	case s.useTLS:
		return "https://" + s.httpAddr
	}
	return "http://" + s.httpAddr
}

// listen listens on addr, on the loopback interface if addr has no host.
func listen(addr string) (net.Listener, error) {
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	return net.Listen("tcp", addr)
}

func (s *Server) serveFailed(err error) {
	s.mu.Lock()
	s.serveErrs = append(s.serveErrs, err)
	s.mu.Unlock()
}

// HTTPAddr returns the address the HTTP API listens on, or "" if it does
// not.
func (s *Server) HTTPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.httpAddr
}

// GRPCAddr returns the address the gRPC service listens on, or "" if it
// does not.
func (s *Server) GRPCAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grpcAddr
}

// Close stops both servers, closing their connections; releases every
// waiting request (hanging ones are dropped without an answer); and waits
// for every goroutine the Server started and every request handler to
// return. Requests arriving later through ServeHTTP are answered busy.
// Close returns the errors the servers failed with, if any; calls after the
// first return nil.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	hs, gs := s.httpSrv, s.grpcSrv
	s.mu.Unlock()

	var errs []error
	if hs != nil {
		if err := hs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("fakellm: http: %w", err))
		}
	}
	if gs != nil {
		gs.Stop()
	}
	s.serving.Wait()
	s.handlers.Done()
	s.handlers.Wait()

	s.mu.Lock()
	errs = append(errs, s.serveErrs...)
	s.mu.Unlock()
	return errors.Join(errs...)
}

// closing reports whether Close was called.
func (s *Server) closing() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}

// decide draws the fate of a valid request under snap; inFlight counts the
// requests being handled, this one included.
func decide(snap *snapshot, inFlight int64) outcome {
	switch {
	case hit(snap.ExhaustedRate):
		return outcomeExhausted
	case snap.lim != nil && !snap.lim.allow():
		return outcomeRateLimited
	case snap.cap != nil && !snap.cap.allow():
		return outcomeBusy
	case snap.MaxConcurrency > 0 && inFlight > int64(snap.MaxConcurrency):
		return outcomeBusy
	case hit(snap.BusyRate):
		return outcomeBusy
	case hit(snap.HangRate):
		return outcomeHang
	case hit(snap.GarbageRate):
		return outcomeGarbage
	case hit(snap.CutRate):
		return outcomeCut
	}
	return outcomeOK
}

// hit reports true with probability rate.
func hit(rate float64) bool {
	return rate > 0 && (rate >= 1 || rand.Float64() < rate)
}

// delay draws the latency of one answer.
func (snap *snapshot) delay() time.Duration {
	d := snap.Latency
	if j := snap.Jitter; j > 0 {
		d += time.Duration(rand.Int64N(2*int64(j)+1)) - j
	}
	return max(d, 0)
}

// ttft draws the wait for the first token of one answer: TTFT spread
// log-normally by TTFTSigma, plus, for a TTFTTailRate share of answers, a
// Pareto-distributed extra wait from TTFTTail (shape 1.5, capped at 100
// times TTFTTail).
func (snap *snapshot) ttft() time.Duration {
	d := float64(snap.TTFT)
	if s := snap.TTFTSigma; s > 0 && d > 0 {
		d *= math.Exp(s * rand.NormFloat64())
	}
	if snap.TTFTTail > 0 && hit(snap.TTFTTailRate) {
		u := 1 - rand.Float64() // (0, 1]
		d += float64(snap.TTFTTail) * min(math.Pow(u, -1/ttftTailShape), maxTTFTTail)
	}
	return time.Duration(min(d, float64(math.MaxInt64/2)))
}

// The shape and the cap, in multiples of TTFTTail, of the heavy tail.
const (
	ttftTailShape = 1.5
	maxTTFTTail   = 100
)

// breakAt draws where a stream of n chunks breaks: the index of the first
// chunk not sent, in 1..n-1, or -1 when it does not break; clean says it
// ends cleanly rather than dropped.
func (snap *snapshot) breakAt(n int) (at int, clean bool) {
	if n < 2 || !hit(snap.BreakRate) {
		return -1, false
	}
	return 1 + rand.IntN(n-1), hit(snap.BreakClean)
}

// thinkInterval is the pause between two streamed reasoning chunks.
func (snap *snapshot) thinkInterval() time.Duration {
	if snap.ThinkInterval > 0 {
		return snap.ThinkInterval
	}
	return snap.tokenInterval()
}

// answerOptions draws what the settings make of the answer to r.
func (snap *snapshot) answerOptions(r *chatRequest) answerOptions {
	return answerOptions{thinkTokens: snap.ThinkTokens, blank: r.jsonMode() && hit(snap.JSONBlankRate),
		prefixCompletion: snap.PrefixCompletion, answerTokens: snap.AnswerTokens}
}

// tokenInterval is the pause between two streamed chunks.
func (snap *snapshot) tokenInterval() time.Duration {
	if snap.TokensPerSec <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / snap.TokensPerSec)
}

// sleep waits for d, and reports false if ctx ended or the Server closed
// first. t is reused across calls when not nil.
func (s *Server) sleep(ctx context.Context, t **time.Timer, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil && !s.closing()
	}
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-(*t).C:
		return true
	case <-ctx.Done():
	case <-s.quit:
	}
	(*t).Stop()
	return false
}

// hang waits until ctx ends or the Server closes.
func (s *Server) hang(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-s.quit:
	}
}
