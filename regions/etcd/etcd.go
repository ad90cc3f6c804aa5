package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/detour-dev/detour/regions"
)

// Key layout in etcd, under a prefix (default "/detour"):
//
//	<prefix>/config           the whole config document (YAML), as in a file
//	<prefix>/drain/<backend>  present: the backend is drained on every replica
//	                          (any value; detourctl writes who and when)
//
// A drain key sets drained: true on the named backend before the document is
// validated; a key naming no backend of the document is ignored. Other keys
// under the prefix are reserved.
const (
	DefaultPrefix = "/detour"
	configName    = "config"
	drainDir      = "drain/"
)

// Keys names detour's keys under one prefix. The zero value uses
// DefaultPrefix.
type Keys struct {
	// Prefix is the root of detour's keys, e.g. "/detour". A trailing "/" is
	// ignored; empty means DefaultPrefix.
	Prefix string
}

func (k Keys) root() string {
	p := strings.TrimRight(k.Prefix, "/")
	if p == "" && k.Prefix == "" {
		p = DefaultPrefix
	}
	return p + "/"
}

// Dir is the prefix every key of the layout starts with ("/detour/").
func (k Keys) Dir() string { return k.root() }

// Config is the key holding the document ("/detour/config").
func (k Keys) Config() string { return k.root() + configName }

// DrainDir is the prefix of the drain keys ("/detour/drain/").
func (k Keys) DrainDir() string { return k.root() + drainDir }

// Drain is the drain key of backend ("/detour/drain/eu-west-a").
func (k Keys) Drain(backend string) string { return k.DrainDir() + backend }

// Config says how to reach etcd and where detour's keys are. Only
// Endpoints is required.
type Config struct {
	// Endpoints are etcd client URLs or host:port pairs
	// ("https://etcd-0.etcd:2379").
	Endpoints []string
	// Prefix is the root of detour's keys. Empty means DefaultPrefix.
	Prefix string
	// DialTimeout bounds authentication when the client is created. Zero
	// means 5s.
	DialTimeout time.Duration
	// Username and Password authenticate to etcd. Empty means no auth.
	Username, Password string
	// CAFile verifies etcd's serving certificate. Empty means the system
	// roots when TLS is on.
	CAFile string
	// CertFile and KeyFile are the client certificate for etcd's mTLS. Empty
	// means none. Certificates are re-read at each handshake, so rotated
	// files are picked up.
	CertFile, KeyFile string
	// TLS turns TLS on even without any file (https:// endpoints also do).
	TLS bool
}

// Keys returns the key layout of c.Prefix.
func (c Config) Keys() Keys { return Keys{Prefix: c.Prefix} }

func (c Config) tlsOn() bool {
	if c.TLS || c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
		return true
	}
	for _, e := range c.Endpoints {
		if strings.HasPrefix(e, "https://") || strings.HasPrefix(e, "unixs://") {
			return true
		}
	}
	return false
}

// Check reports every problem with c, as a *regions.ValidationError, or
// nil.
func (c Config) Check() error {
	var reasons []string
	add := func(format string, args ...any) { reasons = append(reasons, fmt.Sprintf(format, args...)) }
	if len(c.Endpoints) == 0 {
		add("etcd: at least one endpoint is required")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			add("etcd: empty endpoint")
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		add("etcd: a client certificate needs both a cert file and a key file")
	}
	if (c.Username == "") != (c.Password == "") {
		add("etcd: username and password go together")
	}
	if c.Prefix != "" && !strings.HasPrefix(c.Prefix, "/") {
		add("etcd: prefix %q must start with /", c.Prefix)
	}
	if c.DialTimeout < 0 {
		add("etcd: dial timeout must be >= 0")
	}
	if len(reasons) == 0 {
		return nil
	}
	return &regions.ValidationError{Reasons: reasons}
}

// Client returns an etcd client for c. It does not wait for etcd unless
// Username is set: authentication needs etcd, and fails after DialTimeout
// when etcd is unreachable. The caller closes the client.
func (c Config) Client() (*clientv3.Client, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	cc := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		Username:    c.Username,
		Password:    c.Password,
		// detour logs what matters itself (unreachable, rejected, resync);
		// the client's own retries would only add noise.
		Logger: zap.NewNop(),
		// Notice a dead connection (and reconnect) within seconds, not the
		// TCP timeout.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		PermitWithoutStream:  true,
		// Reconnect within a couple of seconds of etcd coming back, not
		// grpc's default of up to two minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	if cc.DialTimeout == 0 {
		cc.DialTimeout = 5 * time.Second
	}
	if c.tlsOn() {
		info := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd tls: %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(c.Endpoints, ","), err)
	}
	return cli, nil
}

// ErrConflict is wrapped by a *ConflictError: the document changed since
// the revision the writer expected.
var ErrConflict = errors.New("config changed concurrently")

// ConflictError is a refused compare-and-swap of the document.
type ConflictError struct {
	Key string
	// Expected is the mod revision the writer based its edit on (0: absent).
	Expected int64
	// Actual is the key's mod revision now (0: absent).
	Actual int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s changed concurrently: the edit expected mod revision %d, the key is now at %d", e.Key, e.Expected, e.Actual)
}

func (e *ConflictError) Unwrap() error { return ErrConflict }

// Document is the config as stored in etcd, read at one revision.
type Document struct {
	// Doc is the raw document; nil when the key is absent.
	Doc []byte
	// ModRevision is the config key's mod revision, the one a
	// compare-and-swap expects; 0 when the key is absent.
	ModRevision int64
	// Drained names the backends with a drain key, sorted.
	Drained []string
	// Revision is the etcd revision of the read.
	Revision int64
}

// Store reads and writes detour's keys in etcd. It is safe for concurrent
// use; every method blocks on etcd until it answers or ctx ends. Store does
// not validate documents: callers validate first (detourctl does), and every
// replica validates again before it applies.
type Store struct {
	kv   clientv3.KV
	keys Keys
}

// NewStore returns a Store over kv (a *clientv3.Client) with the layout keys.
func NewStore(kv clientv3.KV, keys Keys) *Store { return &Store{kv: kv, keys: keys} }

// Keys is the store's key layout.
func (s *Store) Keys() Keys { return s.keys }

// Get reads the document and the drain keys in one consistent read.
func (s *Store) Get(ctx context.Context) (*Document, error) {
	resp, err := s.kv.Get(ctx, s.keys.Dir(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", s.keys.Dir(), err)
	}
	return s.document(resp.Header.Revision, resp.Kvs), nil
}

func (s *Store) document(rev int64, kvs []*mvccpb.KeyValue) *Document {
	d := &Document{Revision: rev}
	for _, kv := range kvs {
		switch k := string(kv.Key); {
		case k == s.keys.Config():
			d.Doc = kv.Value
			if d.Doc == nil {
				d.Doc = []byte{}
			}
			d.ModRevision = kv.ModRevision
		case strings.HasPrefix(k, s.keys.DrainDir()) && len(k) > len(s.keys.DrainDir()):
			d.Drained = append(d.Drained, k[len(s.keys.DrainDir()):])
		}
	}
	slices.Sort(d.Drained)
	return d
}

// Put writes doc if the config key's mod revision is still expect (0: the
// key must be absent) and returns the new revision. A concurrent edit makes
// it fail with a *ConflictError; nothing is written then.
func (s *Store) Put(ctx context.Context, doc []byte, expect int64) (int64, error) {
	key := s.keys.Config()
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", expect)).
		Then(clientv3.OpPut(key, string(doc))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("etcd put %s: %w", key, err)
	}
	if !resp.Succeeded {
		ce := &ConflictError{Key: key, Expected: expect}
		if rr := resp.Responses; len(rr) > 0 {
			if kvs := rr[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
				ce.Actual = kvs[0].ModRevision
			}
		}
		return 0, ce
	}
	return resp.Header.Revision, nil
}

// SetDrained writes (drained) or deletes the drain key of backend and
// returns the revision of the write, or 0 when there was no key to delete.
// The value of a drain key is free text; note says who drained it and why.
func (s *Store) SetDrained(ctx context.Context, backend string, drained bool, note string) (int64, error) {
	if err := checkBackendName(backend); err != nil {
		return 0, err
	}
	key := s.keys.Drain(backend)
	if drained {
		resp, err := s.kv.Put(ctx, key, note)
		if err != nil {
			return 0, fmt.Errorf("etcd put %s: %w", key, err)
		}
		return resp.Header.Revision, nil
	}
	resp, err := s.kv.Delete(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("etcd delete %s: %w", key, err)
	}
	if resp.Deleted == 0 {
		return 0, nil
	}
	return resp.Header.Revision, nil
}

func checkBackendName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("backend name %q: must be non-empty, without / or NUL", name)
	}
	return nil
}

// withDrained returns cfg with drained: true set on the named backends
// (primaries and fallbacks). cfg is not modified.
func withDrained(cfg *regions.Config, drained []string) *regions.Config {
	if len(drained) == 0 {
		return cfg
	}
	c := *cfg
	c.Regions = slices.Clone(cfg.Regions)
	for i := range c.Regions {
		c.Regions[i].Backends = markDrained(c.Regions[i].Backends, drained)
	}
	c.Fallbacks = markDrained(cfg.Fallbacks, drained)
	return &c
}

func markDrained(bs []regions.Backend, drained []string) []regions.Backend {
	bs = slices.Clone(bs)
	for i := range bs {
		if slices.Contains(drained, bs[i].Name) {
			bs[i].Drained = true
		}
	}
	return bs
}
