package fleet

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// ErrUnavailable is returned by Store.Do when Redis is not configured, or
// failed recently and is being left alone for the backoff period. Callers
// treat it like any other Redis failure: they fall back to local behaviour.
var ErrUnavailable = errors.New("fleet: redis unavailable")

// Defaults for the zero fields of Config.
const (
	DefaultTimeout   = 5 * time.Millisecond
	DefaultBackoff   = time.Second
	DefaultKeyPrefix = "detour:"
)

// Config says how to reach the fleet's shared Redis. The zero value means no
// Redis: every replica keeps its cooldowns and limits to itself.
type Config struct {
	// Addr is Redis's "host:port". Empty means no Redis.
	Addr string `yaml:"addr,omitempty" json:"addr,omitempty"`
	// Username for Redis ACLs. Empty means the default user.
	Username string `yaml:"username,omitempty" json:"username,omitempty"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env,omitempty" json:"password_env,omitempty"`
	// PasswordFile names a file holding the password (a mounted Secret);
	// surrounding whitespace is ignored.
	PasswordFile string `yaml:"password_file,omitempty" json:"password_file,omitempty"`
	// Password is the password itself, for programs that build a Config in
	// code. It is never read from or written to a document.
	Password string `yaml:"-" json:"-"`
	// DB is the Redis database number. Zero is database 0.
	DB int `yaml:"db,omitempty" json:"db,omitempty"`
	// TLS, when set, connects with TLS. Nil means plaintext.
	TLS *TLS `yaml:"tls,omitempty" json:"tls,omitempty"`
	// Timeout bounds one Redis operation on the hot path (a limiter check, a
	// cooldown publish). Zero means 5ms. The cache uses its own, longer
	// cache.Config.RedisTimeout.
	Timeout time.Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// Backoff is how long Redis is left alone after a failed operation:
	// during it every operation fails at once with ErrUnavailable and
	// callers use their local fallback. Then one operation probes Redis.
	// Zero means 1s.
	Backoff time.Duration `yaml:"backoff,omitempty" json:"backoff,omitempty"`
	// KeyPrefix starts every key and channel detour uses, so that several
	// fleets can share one Redis. Zero means "detour:".
	KeyPrefix string `yaml:"key_prefix,omitempty" json:"key_prefix,omitempty"`
	// Replicas is the number of replicas the fleet is expected to run. When
	// Redis is unavailable each replica admits 1/Replicas of a backend's
	// qps. Zero means 1 (a replica admits the whole qps on its own).
	Replicas int `yaml:"replicas,omitempty" json:"replicas,omitempty"`
}

// TLS configures a TLS connection to Redis.
type TLS struct {
	// CAFile holds the PEM certificates that sign Redis's certificate.
	// Empty means the system roots.
	CAFile string `yaml:"ca_file,omitempty" json:"ca_file,omitempty"`
	// CertFile and KeyFile hold a PEM client certificate and key, for Redis
	// configured with tls-auth-clients. Empty means no client certificate.
	CertFile string `yaml:"cert_file,omitempty" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty" json:"key_file,omitempty"`
	// ServerName is the name Redis's certificate must carry. Empty means the
	// host of Addr.
	ServerName string `yaml:"server_name,omitempty" json:"server_name,omitempty"`
}

// A zero or negative Timeout or Backoff takes the default (Validate refuses
// negatives, but Open does not call it).
func (c Config) timeout() time.Duration { return cmp.Or(max(c.Timeout, 0), DefaultTimeout) }
func (c Config) backoff() time.Duration { return cmp.Or(max(c.Backoff, 0), DefaultBackoff) }
func (c Config) prefix() string {
	if c.KeyPrefix == "" {
		return DefaultKeyPrefix
	}
	return c.KeyPrefix
}
func (c Config) replicas() int {
	if c.Replicas <= 0 {
		return 1
	}
	return c.Replicas
}

// Store is the fleet's shared Redis, guarded so that a Redis that is down,
// slow or flapping costs each caller at most one bounded timeout: after a
// failed operation Store refuses every operation for Config.Backoff (they
// fail at once with ErrUnavailable), then lets a single operation probe Redis
// while the others keep failing fast, and reopens when the probe succeeds.
//
// A nil *Store is valid and means no Redis: Do returns ErrUnavailable.
// Store is safe for concurrent use. Do blocks for at most its timeout.
type Store struct {
	cfg    Config
	rdb    *redis.Client
	now    func() time.Time
	prefix string

	// downUntil is the end of the current backoff in Unix nanoseconds; zero
	// when Redis is believed healthy.
	downUntil atomic.Int64
	// recovered counts transitions from down to healthy, so that readers of
	// shared state know when to resync.
	recovered atomic.Uint64
	// ops counts the Redis operations attempted (for benchmarks and tests).
	ops atomic.Uint64
	// failures counts the operations and health checks that failed;
	// lastErr holds the last one's error text.
	failures atomic.Uint64
	lastErr  atomic.Pointer[string]
}

// Open returns the Store for cfg. It does no I/O: connections are made on
// first use. When cfg.Addr is empty it returns a nil *Store and no error.
func Open(cfg Config) (*Store, error) {
	if cfg.Addr == "" {
		return nil, nil
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("fleet: redis addr %q: %w", cfg.Addr, err)
	}
	password, err := cfg.password()
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		if tlsCfg, err = cfg.TLS.config(cfg.Addr); err != nil {
			return nil, err
		}
	}
	rdb := redis.NewClient(&redis.Options{
		Addr:      cfg.Addr,
		Username:  cfg.Username,
		Password:  password,
		DB:        cfg.DB,
		TLSConfig: tlsCfg,
		// RESP2 and no CLIENT SETINFO: a new connection costs no extra
		// round trips (HELLO, SETINFO) inside a caller's few milliseconds.
		Protocol:        2,
		DisableIdentity: true,
		// Every call carries its own short deadline; retries would only
		// multiply it.
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// One dial per operation, for the same reason (go-redis would
		// otherwise dial 5 times, 100ms apart, and log each failure).
		DialerRetries: 1,
		DialTimeout:   time.Second,
		ReadTimeout:   time.Second,
		WriteTimeout:  time.Second,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	})
	return &Store{cfg: cfg, rdb: rdb, now: time.Now, prefix: cfg.prefix()}, nil
}

func (c Config) password() (string, error) {
	switch {
	case c.Password != "":
		return c.Password, nil
	case c.PasswordEnv != "":
		v, ok := os.LookupEnv(c.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("fleet: redis password: environment variable %s is not set", c.PasswordEnv)
		}
		return v, nil
	case c.PasswordFile != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("fleet: redis password: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

func (t *TLS) config(addr string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(addr)
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("fleet: redis tls: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("fleet: redis tls: no certificate in %s", t.CAFile)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("fleet: redis tls: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Close closes the connections to Redis. Calls made after Close fail with an
// error. Close on a nil Store does nothing.
func (s *Store) Close() error {
	if s == nil {
		return nil
	}
	return s.rdb.Close()
}

// Key returns the Redis key (or channel) name for the given parts, under
// the configured prefix (the default prefix for a nil Store).
func (s *Store) Key(parts ...string) string {
	prefix := DefaultKeyPrefix
	if s != nil {
		prefix = s.prefix
	}
	n := len(prefix)
	for _, p := range parts {
		n += len(p) + 1
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(prefix)
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(p)
	}
	return b.String()
}

// Available reports whether Do would try Redis now rather than fail at once.
// It does no I/O.
func (s *Store) Available() bool {
	if s == nil {
		return false
	}
	d := s.downUntil.Load()
	return d == 0 || s.now().UnixNano() >= d
}

// Do runs fn against Redis under a deadline of timeout (zero means
// Config.Timeout), and reports its error. It fails at once with
// ErrUnavailable when s is nil or Redis is in its backoff period.
//
// An error from fn other than redis.Nil, and other than ctx's own
// cancellation, counts as a Redis failure and starts a backoff period. fn
// must make its Redis calls with the context it is given.
func (s *Store) Do(ctx context.Context, timeout time.Duration, fn func(ctx context.Context, c redis.Cmdable) error) error {
	if s == nil {
		return ErrUnavailable
	}
	probing := false
	if d := s.downUntil.Load(); d != 0 {
		now := s.now().UnixNano()
		if now < d {
			return ErrUnavailable
		}
		// Backoff over: one caller probes, the others stay local until it
		// reports.
		if !s.downUntil.CompareAndSwap(d, now+int64(s.cfg.backoff())) {
			return ErrUnavailable
		}
		probing = true
	}
	if timeout <= 0 {
		timeout = s.cfg.timeout()
	}
	opCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s.ops.Add(1)
	err := fn(opCtx, s.rdb)
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		if s.downUntil.Load() != 0 && s.downUntil.Swap(0) != 0 {
			s.recovered.Add(1)
		}
		return err
	case ctx.Err() != nil:
		// The caller's own cancellation or deadline: not Redis's fault. A
		// probe that ends this way lets the next caller probe at once.
		if probing {
			s.downUntil.Store(1)
		}
		return err
	}
	s.downUntil.Store(s.now().UnixNano() + int64(s.cfg.backoff()))
	s.failed(err)
	return fmt.Errorf("fleet: redis: %w", err)
}

// failed records a failed operation or health check.
func (s *Store) failed(err error) {
	s.failures.Add(1)
	msg := err.Error()
	s.lastErr.Store(&msg)
}

// Ping asks Redis for PONG within timeout, bypassing the backoff that Do
// applies: it is the health check of a Monitor, which must see Redis come
// back whether or not callers are using it. A failure is counted in Errors
// but starts no backoff.
func (s *Store) Ping(ctx context.Context, timeout time.Duration) error {
	if s == nil {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := s.rdb.Ping(ctx).Err()
	if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
		s.failed(err)
	}
	return err
}

// Errors returns how many Redis operations (Do) and health checks (Ping)
// failed, and the last one's error ("" when none did). Operations refused
// during a backoff, without trying Redis, are not counted.
func (s *Store) Errors() (n uint64, last string) {
	if s == nil {
		return 0, ""
	}
	if p := s.lastErr.Load(); p != nil {
		last = *p
	}
	return s.failures.Load(), last
}

// Addr is the Redis address the Store uses.
func (s *Store) Addr() string {
	if s == nil {
		return ""
	}
	return s.cfg.Addr
}

// Timeout is the deadline of a hot-path operation (Config.Timeout with its
// default): how long a caller may wait for Redis before it decides on its
// own.
func (s *Store) Timeout() time.Duration {
	if s == nil {
		return DefaultTimeout
	}
	return s.cfg.timeout()
}

// Replicas is the number of replicas a limit is shared by while Redis is
// unreachable (Config.Replicas with its default): each admits its share.
func (s *Store) Replicas() int {
	if s == nil {
		return 1
	}
	return s.cfg.replicas()
}

// Client returns the underlying go-redis client, for subscriptions. Calls
// made through it bypass the Store's guard.
func (s *Store) Client() *redis.Client { return s.rdb }

// Recoveries returns how many times Redis came back after a failure. It
// grows by one each time Do succeeds after a backoff period.
func (s *Store) Recoveries() uint64 {
	if s == nil {
		return 0
	}
	return s.recovered.Load()
}

// Ops returns the number of Redis operations Do has attempted. Benchmarks
// divide it by the number of calls to report Redis operations per call.
func (s *Store) Ops() uint64 {
	if s == nil {
		return 0
	}
	return s.ops.Load()
}

// Validate reports every problem with c, joined (errors.Join), or nil. It
// reads no file and no environment variable (Open does).
func (c Config) Validate() error {
	var errs []error
	if c.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			errs = append(errs, fmt.Errorf("redis.addr %q: must be host:port", c.Addr))
		}
	}
	if c.PasswordEnv != "" && c.PasswordFile != "" {
		errs = append(errs, errors.New("redis: set password_env or password_file, not both"))
	}
	if c.DB < 0 {
		errs = append(errs, errors.New("redis.db must be >= 0"))
	}
	if c.Timeout < 0 || c.Backoff < 0 || c.Replicas < 0 {
		errs = append(errs, errors.New("redis.timeout, redis.backoff and redis.replicas must be >= 0"))
	}
	if t := c.TLS; t != nil && (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, errors.New("redis.tls: cert_file and key_file go together"))
	}
	return errors.Join(errs...)
}
