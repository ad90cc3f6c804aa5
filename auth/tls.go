package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultPollInterval is how often a ServerTLS looks at its files when
// ServerTLSOptions.PollInterval is zero. Kubernetes takes up to a minute or
// so to project a rotated Secret into a pod, so a few seconds more is noise.
const DefaultPollInterval = 10 * time.Second

// ServerTLSOptions name the files of a ServerTLS.
type ServerTLSOptions struct {
	// CertFile and KeyFile hold the server's PEM certificate chain (leaf
	// first) and private key. Required.
	CertFile, KeyFile string
	// ClientCAFile holds the PEM bundle of CAs that sign client
	// certificates. Empty means TLS without client certificates; set, it
	// means mutual TLS.
	ClientCAFile string
	// OptionalClientCert lets clients without a certificate connect when
	// ClientCAFile is set (tls.VerifyClientCertIfGiven), so that token
	// callers can share the listener (--auth=any or token). A certificate
	// that is presented is still verified. Zero requires and verifies one
	// (tls.RequireAndVerifyClientCert).
	OptionalClientCert bool
	// PollInterval is how often the files are read to see whether they
	// changed. Zero means DefaultPollInterval; negative means never (call
	// Reload, e.g. on SIGHUP).
	PollInterval time.Duration
	// Logger receives reloads and reload errors. Nil uses slog.Default().
	Logger *slog.Logger
}

// ServerTLS serves a certificate and an optional client-CA bundle from files
// and picks up new versions of them without a restart.
//
// Reloading: a goroutine reads the three files every PollInterval and
// compares a SHA-256 of their contents with what it serves. That works
// whatever replaced them: an atomic symlink swap of a Kubernetes Secret
// volume (the "..data" link), cert-manager, or a plain rewrite; it needs no
// file-system notifications, which miss symlink swaps on some setups, and it
// costs nothing on the handshake path. A new version that does not parse
// (a bad PEM, a key that does not match the certificate, an empty CA bundle)
// is logged once and the previous one keeps serving; it is tried again once
// the files change again. Because the config is chosen per handshake
// (tls.Config.GetConfigForClient), new certificates and new client CAs apply
// to every new connection; established connections keep what they
// negotiated. With a client CA, TLS session tickets are off so that every
// connection's certificate is checked against the current CAs.
//
// A ServerTLS is safe for concurrent use. Close stops the poller and waits
// for it.
type ServerTLS struct {
	opts ServerTLSOptions
	log  *slog.Logger
	cur  atomic.Pointer[tlsState]

	mu      sync.Mutex // serializes loads; guards lastBad
	lastBad [sha256.Size]byte

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// tlsState is one loaded version of the files. Immutable.
type tlsState struct {
	sum    [sha256.Size]byte
	config *tls.Config
	leaf   *x509.Certificate
}

// NewServerTLS loads the files and, unless PollInterval is negative, starts
// watching them. It fails when the first load fails.
func NewServerTLS(opts ServerTLSOptions) (*ServerTLS, error) {
	if opts.CertFile == "" || opts.KeyFile == "" {
		return nil, errors.New("tls: a certificate file and a key file are required")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	s := &ServerTLS{opts: opts, log: opts.Logger, done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if opts.PollInterval < 0 {
		close(s.done)
		return s, nil
	}
	go s.poll(ctx)
	return s, nil
}

// Close stops watching the files and waits for the poller to return. The
// last loaded certificate keeps serving. Close is idempotent.
func (s *ServerTLS) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

// Config returns a server *tls.Config that serves the current certificate
// and client CAs at each handshake. Each call returns a new value the caller
// may adjust (e.g. MinVersion) before use.
func (s *ServerTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load().config, nil
		},
	}
}

// Credentials returns gRPC server transport credentials over Config, for
// grpc.Creds.
func (s *ServerTLS) Credentials() credentials.TransportCredentials {
	return credentials.NewTLS(s.Config())
}

// Leaf returns the certificate being served, e.g. to log its serial number
// and expiry.
func (s *ServerTLS) Leaf() *x509.Certificate { return s.cur.Load().leaf }

// Reload reads and loads the files now, whether they changed or not. On
// error the previous version keeps serving and the error, which names the
// file but never its content, is returned and logged.
func (s *ServerTLS) Reload() error {
	return s.load(true)
}

func (s *ServerTLS) poll(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.load(false) // logs its own errors
		}
	}
}

// load reads the files and, when forced or when they differ from both the
// served version and the last bad one, parses and installs them.
func (s *ServerTLS) load(force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	files, sum, err := s.read()
	if err != nil {
		// A file missing or unreadable in passing: say so once per distinct
		// failure, keep serving.
		errSum := sha256.Sum256([]byte(err.Error()))
		if s.cur.Load() != nil && (force || errSum != s.lastBad) {
			s.log.Error("tls reload failed; serving the previous certificate", "err", err)
		}
		s.lastBad = errSum
		return err
	}
	if cur := s.cur.Load(); !force && ((cur != nil && cur.sum == sum) || sum == s.lastBad) {
		return nil
	}
	st, err := s.parse(files, sum)
	for try := 0; err != nil && try < 2; try++ {
		// The three files are read one by one, so a read that straddles an
		// update sees a certificate of one version and a key of the next.
		// Believe a failure only when a second read gives the same bytes.
		again, againSum, rerr := s.read()
		if rerr != nil || againSum == sum {
			break
		}
		files, sum = again, againSum
		st, err = s.parse(files, sum)
	}
	if err != nil {
		s.lastBad = sum
		if s.cur.Load() != nil {
			s.log.Error("tls reload failed; serving the previous certificate", "err", err)
		}
		return err
	}
	s.lastBad = [sha256.Size]byte{}
	s.cur.Store(st)
	s.log.Info("tls certificate loaded",
		"cert", s.opts.CertFile,
		"subject", st.leaf.Subject.String(),
		"serial", st.leaf.SerialNumber.Text(16),
		"not_after", st.leaf.NotAfter.UTC().Format(time.RFC3339),
		"client_ca", s.opts.ClientCAFile)
	if left := time.Until(st.leaf.NotAfter); left < 7*24*time.Hour {
		s.log.Warn("tls certificate expires soon", "serial", st.leaf.SerialNumber.Text(16), "in", left.Round(time.Minute).String())
	}
	return nil
}

// tlsFiles are the raw contents of the three files.
type tlsFiles struct{ cert, key, ca []byte }

func (s *ServerTLS) read() (tlsFiles, [sha256.Size]byte, error) {
	var f tlsFiles
	var err error
	if f.cert, err = os.ReadFile(s.opts.CertFile); err != nil {
		return f, [sha256.Size]byte{}, fmt.Errorf("tls certificate: %w", err)
	}
	if f.key, err = os.ReadFile(s.opts.KeyFile); err != nil {
		return f, [sha256.Size]byte{}, fmt.Errorf("tls key: %w", err)
	}
	if s.opts.ClientCAFile != "" {
		if f.ca, err = os.ReadFile(s.opts.ClientCAFile); err != nil {
			return f, [sha256.Size]byte{}, fmt.Errorf("tls client CA: %w", err)
		}
	}
	h := sha256.New()
	for _, b := range [][]byte{f.cert, f.key, f.ca} {
		binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return f, sum, nil
}

func (s *ServerTLS) parse(f tlsFiles, sum [sha256.Size]byte) (*tlsState, error) {
	cert, err := tls.X509KeyPair(f.cert, f.key)
	if err != nil {
		// crypto/tls's messages describe the PEM blocks, never the key.
		return nil, fmt.Errorf("tls key pair %s, %s: %w", s.opts.CertFile, s.opts.KeyFile, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls certificate %s: %w", s.opts.CertFile, err)
		}
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if s.opts.ClientCAFile != "" {
		pool, err := certPool(f.ca)
		if err != nil {
			return nil, fmt.Errorf("tls client CA %s: %w", s.opts.ClientCAFile, err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		if s.opts.OptionalClientCert {
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
		}
		cfg.SessionTicketsDisabled = true
	}
	return &tlsState{sum: sum, config: cfg, leaf: leaf}, nil
}

// errNoCerts is returned for a CA bundle without a certificate.
var errNoCerts = errors.New("no PEM certificate in the bundle")

// certPool parses a PEM bundle. Unlike x509.CertPool.AppendCertsFromPEM, it
// fails on a bundle that holds no certificate or a block that does not
// parse, so a truncated file is noticed rather than trusted partially.
func certPool(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := bytes.TrimSpace(pemData)
	for len(rest) > 0 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("bundle holds data that is not PEM")
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
		rest = bytes.TrimSpace(rest)
	}
	if n == 0 {
		return nil, errNoCerts
	}
	return pool, nil
}
