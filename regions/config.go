package regions

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Backend kinds.
const (
	KindOpenAI = "openai" // OpenAI-compatible HTTP chat completions
	KindDetour = "detour" // gRPC detour.v1.Router
)

// Values of Backend.SendTenantAs: the JSON member the tenant goes in.
const (
	TenantAsUser   = "user"    // OpenAI's "user"
	TenantAsUserID = "user_id" // DeepSeek's "user_id"
)

// Config is the whole routing document: regions of backends, fallback
// providers and the policies that apply to them. The same document is read
// from a YAML file or from etcd. A Config is a plain value; once published in a
// Snapshot it must not be modified.
type Config struct {
	// Regions hold the primary backends. At least one usable backend is required.
	Regions []Region `yaml:"regions" json:"regions"`
	// Fallbacks are tried in order only when no primary can answer. Empty means
	// no fallback.
	Fallbacks []Backend `yaml:"fallbacks,omitempty" json:"fallbacks,omitempty"`
	// Retry is the retry policy; zero fields take the documented defaults.
	Retry RetryPolicy `yaml:"retry,omitempty" json:"retry,omitempty"`
	// Breaker is the default circuit breaker policy for every backend.
	Breaker BreakerPolicy `yaml:"breaker,omitempty" json:"breaker,omitempty"`
	// Capacity is how detour learns and holds each backend's working
	// capacity; the zero value turns the adaptive limits on with defaults.
	Capacity CapacityPolicy `yaml:"capacity,omitempty" json:"capacity,omitempty"`
	// Limits bound what callers may ask for.
	Limits LimitPolicy `yaml:"limits,omitempty" json:"limits,omitempty"`
	// Tenants are the known callers with their quotas and credentials. Empty
	// means every caller shares limits.tenant_qps.
	Tenants []Tenant `yaml:"tenants,omitempty" json:"tenants,omitempty"`
	// Admins may call the Admin service when authentication is on.
	Admins []Principal `yaml:"admins,omitempty" json:"admins,omitempty"`
	// Cache is the answer cache policy; the zero value caches deterministic
	// requests for 5 minutes (see CachePolicy).
	Cache CachePolicy `yaml:"cache,omitempty" json:"cache,omitempty"`
	// Streams is how streams start (first-token bound, hedged starts) and
	// survive breaks (continuation); see StreamPolicy.
	Streams StreamPolicy `yaml:"streams,omitempty" json:"streams,omitempty"`
	// Spend prices tokens and limits each tenant's token rate and budget
	// (spend.go); the zero value prices and limits nothing.
	Spend SpendPolicy `yaml:"spend,omitempty" json:"spend,omitempty"`
}

// Principal names who a caller is: an mTLS identity or a bearer token. Tokens
// are stored only as hex SHA-256 digests.
type Principal struct {
	// Name identifies the principal in logs and metrics.
	Name string `yaml:"name" json:"name"`
	// Identities are mTLS identities: a URI SAN ("spiffe://corp/ns/x/sa/y")
	// or a certificate common name ("CN=search").
	Identities []string `yaml:"identities,omitempty" json:"identities,omitempty"`
	// TokenSHA256 are hex SHA-256 digests of accepted bearer tokens.
	TokenSHA256 []string `yaml:"token_sha256,omitempty" json:"token_sha256,omitempty"`
}

// Tenant is a caller with its own quota.
type Tenant struct {
	Principal `yaml:",inline" json:",inline"`
	// QPS caps this tenant's calls per second. Zero means limits.tenant_qps.
	QPS float64 `yaml:"qps,omitempty" json:"qps,omitempty"`
	// Burst is the quota's bucket size. Zero means max(1, QPS).
	Burst int `yaml:"burst,omitempty" json:"burst,omitempty"`
	// Models the tenant may call. Empty means every model.
	Models []string `yaml:"models,omitempty" json:"models,omitempty"`
}

// Region is a group of backends that fail together (a provider's regional
// endpoint, a data centre).
type Region struct {
	// Name is unique among regions, e.g. "eu-west".
	Name string `yaml:"name" json:"name"`
	// Priority orders remote regions: lower is tried first. Zero is highest.
	// The router's own region is always tried before the others.
	Priority int `yaml:"priority,omitempty" json:"priority,omitempty"`
	// Backends serve this region. At least one is required.
	Backends []Backend `yaml:"backends" json:"backends"`
}

// Backend is one upstream endpoint.
type Backend struct {
	// Name is unique across all regions and fallbacks.
	Name string `yaml:"name" json:"name"`
	// Kind is "openai" (default) or "detour".
	Kind string `yaml:"kind,omitempty" json:"kind,omitempty"`
	// Endpoint is the base URL for openai backends
	// ("http://127.0.0.1:8080/v1") or host:port for detour backends.
	Endpoint string `yaml:"endpoint" json:"endpoint"`
	// Models this backend serves. Empty means every model.
	Models []string `yaml:"models,omitempty" json:"models,omitempty"`
	// Weight for balancing inside the region, 1..1000. Zero means 1.
	Weight int `yaml:"weight,omitempty" json:"weight,omitempty"`
	// Zone of the backend; backends in the router's own zone are preferred.
	Zone string `yaml:"zone,omitempty" json:"zone,omitempty"`
	// QPS caps requests per second sent to the backend. Zero means no cap.
	QPS float64 `yaml:"qps,omitempty" json:"qps,omitempty"`
	// MaxConcurrency caps in-flight requests. Zero means no cap.
	MaxConcurrency int `yaml:"max_concurrency,omitempty" json:"max_concurrency,omitempty"`
	// Timeout bounds one attempt. Zero means the retry policy's
	// attempt_timeout. For streams, and for unary calls to an upstream that
	// sends keep-alives, it bounds each silence instead: reasoning and
	// tool-call pieces, empty keep-alive lines and SSE comments all count as
	// the upstream being alive.
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// QueueTimeout is how long the backend may hold a call before the first
	// byte of its answer, keep-alives included (DeepSeek keeps a queued
	// request alive with empty lines or ": keep-alive" comments for up to
	// 30 minutes). Past it the attempt counts as busy and the call moves on.
	// Zero means Timeout: keep-alives then never make a call wait longer
	// than an upstream that says nothing.
	QueueTimeout Duration `yaml:"queue_timeout,omitempty" json:"queue_timeout,omitempty"`
	// FirstTokenTimeout bounds a stream attempt's wait for its first token
	// (content, reasoning or a tool call), keep-alives not counted, apart
	// from the gap between tokens (Timeout) and the call's deadline. Past it
	// the attempt counts as busy and the call moves on. Zero means
	// streams.first_token_timeout (zero there: no bound of its own).
	FirstTokenTimeout Duration `yaml:"first_token_timeout,omitempty" json:"first_token_timeout,omitempty"`
	// PrefixCompletion says the backend continues an answer from an
	// assistant prefix (DeepSeek's prefix completion, on its /beta
	// endpoint): a broken stream is then continued on it with the text so
	// far as that prefix. Otherwise the text so far goes as an assistant
	// turn followed by streams.continue_prompt.
	PrefixCompletion bool `yaml:"prefix_completion,omitempty" json:"prefix_completion,omitempty"`
	// ExhaustedFor is how long the backend stays out of rotation, on every
	// replica, after it said its account cannot pay (HTTP 402 "Insufficient
	// Balance"). Zero means 5m.
	ExhaustedFor Duration `yaml:"exhausted_for,omitempty" json:"exhausted_for,omitempty"`
	// SendTenantAs sends the caller's tenant upstream, so that the provider
	// can schedule and cache per tenant and one noisy tenant does not share a
	// provider-side queue with the others: "user" (OpenAI's user, replacing
	// the caller's), "user_id" (DeepSeek's), or empty to send nothing. For
	// kind detour, any value sets the request's user.
	SendTenantAs string `yaml:"send_tenant_as,omitempty" json:"send_tenant_as,omitempty"`
	// APIKeyEnv names the environment variable holding the API key; it must
	// be called DETOUR_KEY_* (or be listed in the process's
	// DETOUR_KEY_ENV_ALLOW).
	APIKeyEnv string `yaml:"api_key_env,omitempty" json:"api_key_env,omitempty"`
	// APIKeyFile names a file holding the API key (a mounted Secret), inside
	// one of the process's DETOUR_KEY_DIRS (default /var/run/secrets,
	// /run/secrets, /etc/detour/keys).
	APIKeyFile string `yaml:"api_key_file,omitempty" json:"api_key_file,omitempty"`
	// Drained backends take no new calls.
	Drained bool `yaml:"drained,omitempty" json:"drained,omitempty"`
	// Breaker overrides the document's breaker policy for this backend. Nil
	// uses the document's.
	Breaker *BreakerPolicy `yaml:"breaker,omitempty" json:"breaker,omitempty"`
	// TLS says how to verify the backend. Nil: https endpoints are verified
	// against the system roots; detour endpoints are plaintext.
	TLS *BackendTLS `yaml:"tls,omitempty" json:"tls,omitempty"`
	// Connections tunes the pool of HTTP connections to an openai backend:
	// HTTP/2, how many connections, how long they idle. Nil: every field's
	// default. A detour backend's one gRPC connection multiplexes already.
	Connections *BackendConnections `yaml:"connections,omitempty" json:"connections,omitempty"`
	// AllowUnsafeEndpoint lets Endpoint be a link-local address
	// (169.254.0.0/16, fe80::/10) or a cloud instance metadata service
	// (fd00:ec2::254, metadata.google.internal, ...), or carry credentials
	// in its URL (user:password@). False refuses them: anyone who can write
	// the document could otherwise aim detour's API keys at the host's
	// metadata service, or keep a secret in the document.
	AllowUnsafeEndpoint bool `yaml:"allow_unsafe_endpoint,omitempty" json:"allow_unsafe_endpoint,omitempty"`
}

// BackendTLS is how detour verifies a backend (always; there is no option to
// skip verification) and which client certificate it presents.
type BackendTLS struct {
	// CAFile replaces the system roots with a private CA bundle. Empty means
	// the system roots.
	CAFile string `yaml:"ca_file,omitempty" json:"ca_file,omitempty"`
	// ServerName is the name verified in the backend's certificate. Empty
	// means the endpoint's host.
	ServerName string `yaml:"server_name,omitempty" json:"server_name,omitempty"`
	// CertFile and KeyFile are a client certificate for mutual TLS.
	CertFile string `yaml:"cert_file,omitempty" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty" json:"key_file,omitempty"`
}

// HTTP/2 modes of BackendConnections.HTTP2.
const (
	HTTP2Auto = "auto" // h2 when the TLS handshake negotiates it (ALPN), else HTTP/1.1
	HTTP2H2C  = "h2c"  // HTTP/2 without TLS, with prior knowledge (fakellm, sidecars)
	HTTP2Off  = "off"  // HTTP/1.1 only
)

// BackendConnections tunes the HTTP connection pool of an openai backend.
// Over HTTP/2 one connection carries many calls at once, up to the
// backend's SETTINGS_MAX_CONCURRENT_STREAMS (100 to 250 is common); the
// pool opens another connection when every one is full. Over HTTP/1.1 a
// connection carries one call at a time: each call in flight holds one.
type BackendConnections struct {
	// HTTP2 is "auto" (empty means auto): HTTP/2 when an https endpoint's
	// TLS handshake negotiates h2, HTTP/1.1 otherwise and on http://
	// endpoints; "h2c": HTTP/2 without TLS on an http:// endpoint (the
	// backend must speak it: every call fails otherwise); "off": HTTP/1.1
	// only.
	HTTP2 string `yaml:"http2,omitempty" json:"http2,omitempty"`
	// MaxConns caps the connections being dialed at once and, over
	// HTTP/1.1, the connections open at once (dialing, busy and idle: a
	// call that finds none free waits for one). Over HTTP/2 it bounds the
	// dials only: a burst of calls beyond the streams of the open
	// connections makes net/http dial a connection per waiting call and keep
	// the few it needs (bench inflight: 4,000 calls over h2c opened 9,694
	// connections to keep 21, and held 15 KiB more per call for it; with 32,
	// 451 for 10,000 calls). Zero means no cap, except with h2c: 32
	// (DefaultH2CMaxConns).
	MaxConns int `yaml:"max_conns,omitempty" json:"max_conns,omitempty"`
	// MaxIdleConns caps the idle HTTP/1.1 connections kept for reuse. Zero
	// means 256.
	MaxIdleConns int `yaml:"max_idle_conns,omitempty" json:"max_idle_conns,omitempty"`
	// IdleTimeout closes a connection idle this long. Zero means 90s.
	IdleTimeout Duration `yaml:"idle_timeout,omitempty" json:"idle_timeout,omitempty"`
	// PingTimeout, over HTTP/2: a connection that received nothing for this
	// long is sent a PING, and closed (failing its calls, which then retry
	// elsewhere) when the answer takes as long again; this finds a dead
	// connection (a NAT that forgot it) under calls that wait in silence.
	// Zero means no pings.
	PingTimeout Duration `yaml:"ping_timeout,omitempty" json:"ping_timeout,omitempty"`
}

// DefaultH2CMaxConns is MaxConns's zero value with h2c.
const DefaultH2CMaxConns = 32

// Mode is HTTP2 with the empty default applied.
func (c *BackendConnections) Mode() string {
	if c == nil || c.HTTP2 == "" {
		return HTTP2Auto
	}
	return c.HTTP2
}

// RetryPolicy bounds how hard detour tries before it degrades.
type RetryPolicy struct {
	// MaxAttempts is the number of upstream attempts per call across primaries,
	// including the first. Zero means 3 (the client recipe's).
	MaxAttempts int `yaml:"max_attempts,omitempty" json:"max_attempts,omitempty"`
	// BackoffBase is the first backoff before a retry on a backend the call
	// already tried. Zero means 25ms.
	BackoffBase Duration `yaml:"backoff_base,omitempty" json:"backoff_base,omitempty"`
	// BackoffMax caps a backoff. Zero means 1s.
	BackoffMax Duration `yaml:"backoff_max,omitempty" json:"backoff_max,omitempty"`
	// AttemptTimeout bounds one attempt when the backend sets no timeout.
	// Zero means 30s.
	AttemptTimeout Duration `yaml:"attempt_timeout,omitempty" json:"attempt_timeout,omitempty"`
	// BudgetRatio is the share of recent requests that may be extra upstream
	// calls (retries, hedges and calls to a backend whose breaker is open).
	// Zero means 0.8: at most 1.8 upstream calls per call, plus the floor.
	BudgetRatio float64 `yaml:"budget_ratio,omitempty" json:"budget_ratio,omitempty"`
	// BudgetMinPerSecond is the retry floor per second. Zero means 10.
	BudgetMinPerSecond float64 `yaml:"budget_min_per_second,omitempty" json:"budget_min_per_second,omitempty"`
	// HedgeAfter sends a second attempt to another region when the first has
	// not answered after this long, and keeps the first answer (unary calls
	// only). Zero turns hedging off.
	HedgeAfter Duration `yaml:"hedge_after,omitempty" json:"hedge_after,omitempty"`
}

// BreakerPolicy says when a backend's breaker opens. The breaker is for dead
// backends; a busy one keeps the traffic its adaptive limit says it can
// serve (see CapacityPolicy).
type BreakerPolicy struct {
	// ConsecutiveFailures opens the breaker after that many answers in a
	// row that were not answers at all: refused or reset connections,
	// timeouts, DNS or TLS failures, 5xx other than busy, malformed bodies.
	// Zero means 5.
	ConsecutiveFailures int `yaml:"consecutive_failures,omitempty" json:"consecutive_failures,omitempty"`
	// ConsecutiveBusy opens the breaker after that many busy answers
	// (429/503/529, "overloaded") in a row. Zero means never: busy answers
	// alone open it only through BusyRatio.
	ConsecutiveBusy int `yaml:"consecutive_busy,omitempty" json:"consecutive_busy,omitempty"`
	// BusyRatio opens the breaker when that share of the answers in Window
	// was busy or failed. Zero means 0.95: a backend that answers even one
	// call in ten keeps its traffic.
	BusyRatio float64 `yaml:"busy_ratio,omitempty" json:"busy_ratio,omitempty"`
	// MinRequests is the volume in Window below which BusyRatio is ignored.
	// Zero means 50.
	MinRequests int `yaml:"min_requests,omitempty" json:"min_requests,omitempty"`
	// Window is the rolling window for BusyRatio. Zero means 10s.
	Window Duration `yaml:"window,omitempty" json:"window,omitempty"`
	// OpenFor is how long an open breaker waits before probing. Zero means 5s.
	OpenFor Duration `yaml:"open_for,omitempty" json:"open_for,omitempty"`
	// MaxOpen caps one opening, however long a Retry-After asks for. Zero
	// means 2m.
	MaxOpen Duration `yaml:"max_open,omitempty" json:"max_open,omitempty"`
	// HalfOpenProbes is the number of probes admitted while half-open. Zero
	// means 3.
	HalfOpenProbes int `yaml:"half_open_probes,omitempty" json:"half_open_probes,omitempty"`
}

// CapacityPolicy is how detour finds and holds each backend's working
// capacity: a concurrency limit per backend that grows while answers come
// back and shrinks when detour's own load makes the backend busy, a share of
// calls per region that follows its backends' answered share, and a bounded
// wait for capacity when every candidate is full.
type CapacityPolicy struct {
	// Disabled turns the adaptive limits off: a backend takes calls up to
	// its static max_concurrency and qps only, and no call waits for
	// capacity.
	Disabled bool `yaml:"disabled,omitempty" json:"disabled,omitempty"`
	// InitialLimit is a backend's concurrency limit before it has learned
	// one (a replica that finds other replicas' limits in Redis starts from
	// theirs). Zero means 16.
	InitialLimit int `yaml:"initial_limit,omitempty" json:"initial_limit,omitempty"`
	// MinLimit is the least a limit falls to. Zero means 1.
	MinLimit int `yaml:"min_limit,omitempty" json:"min_limit,omitempty"`
	// MaxLimit is the most a limit grows to; a backend's max_concurrency,
	// when set, caps it too. Zero means 10000.
	MaxLimit int `yaml:"max_limit,omitempty" json:"max_limit,omitempty"`
	// MaxQueueWait is how long a call may wait for a slot when every
	// candidate is at its limit, within its own deadline. Zero means 1s;
	// negative means never wait (refuse at once).
	MaxQueueWait Duration `yaml:"max_queue_wait,omitempty" json:"max_queue_wait,omitempty"`
	// QueueFactor bounds a backend's waiting calls to this multiple of its
	// limit (at least 16). Zero means 4.
	QueueFactor float64 `yaml:"queue_factor,omitempty" json:"queue_factor,omitempty"`
	// SpillFactor sets the share of first attempts a region keeps: its
	// backends' recent answered share times SpillFactor (capped at 1); the
	// rest goes to the next region by priority. 1 (the default, for zero)
	// keeps 50% of the calls at a region whose backends answer half of them
	// busy; a larger value keeps more at home at the cost of more retries.
	SpillFactor float64 `yaml:"spill_factor,omitempty" json:"spill_factor,omitempty"`
}

// CachePolicy is the answer cache's section of the document. The zero value
// caches deterministic requests (temperature 0) for 5 minutes, keeps them an
// hour longer for stale-if-error, in at most 64 MiB of memory, and in Redis
// too when the fleet has one. Package cache applies it: its cache.Config has
// the same fields, so the router converts one to the other
// (cache.Config(p)), and its constants hold the defaults named here.
type CachePolicy struct {
	// Disabled turns the cache off: nothing is looked up, stored or
	// coalesced.
	Disabled bool `yaml:"disabled,omitempty" json:"disabled,omitempty"`
	// TTL is how long a stored answer is fresh. Zero means 5m.
	TTL time.Duration `yaml:"ttl,omitempty" json:"ttl,omitempty"`
	// MaxTTL caps the ttl hint of a request. Zero means 24h.
	MaxTTL time.Duration `yaml:"max_ttl,omitempty" json:"max_ttl,omitempty"`
	// StaleWindow is how long past its TTL an answer is kept, to be served
	// (marked STALE_CACHE) only when every backend and fallback failed. Zero
	// means 1h; a negative value means no stale answers.
	StaleWindow time.Duration `yaml:"stale_window,omitempty" json:"stale_window,omitempty"`
	// Deterministic says the backends answer deterministically when a
	// request sets no temperature (e.g. self-hosted models with greedy
	// decoding), so such requests are cached too. False caches only requests
	// that set temperature 0, and those with the force_cache hint.
	Deterministic bool `yaml:"deterministic,omitempty" json:"deterministic,omitempty"`
	// Scope says whose answers a request may get: "tenant" keys every
	// answer on the caller's tenant (the authenticated identity), so no
	// tenant reads another's; "shared" shares answers between tenants (the
	// answer depends on the prompt, not on who sent it). Empty means tenant
	// when authentication is on and shared when it is off (then the tenant
	// is only what a caller claims).
	Scope string `yaml:"scope,omitempty" json:"scope,omitempty"`
	// PerUser makes the request's user field part of the key too (with the
	// tenant: one tenant's end-user ids never reach another's answers), so
	// that answers are never shared between end users within the scope.
	PerUser bool `yaml:"per_user,omitempty" json:"per_user,omitempty"`
	// MaxBytes bounds the memory of the local tier (encoded answers and
	// keys). Zero means 64 MiB; a negative value means no local tier.
	MaxBytes int64 `yaml:"max_bytes,omitempty" json:"max_bytes,omitempty"`
	// MaxEntryBytes is the largest answer (encoded) that is cached. Zero
	// means 1 MiB.
	MaxEntryBytes int `yaml:"max_entry_bytes,omitempty" json:"max_entry_bytes,omitempty"`
	// LocalOnly keeps answers out of Redis even when the fleet has one.
	LocalOnly bool `yaml:"local_only,omitempty" json:"local_only,omitempty"`
	// RedisTimeout bounds one read or write of the Redis tier. Zero means
	// 20ms.
	RedisTimeout time.Duration `yaml:"redis_timeout,omitempty" json:"redis_timeout,omitempty"`
	// CoalesceTimeout bounds the one upstream call made for identical
	// concurrent requests; it is cancelled sooner when every caller waiting
	// for it has gone. Zero means 2m.
	CoalesceTimeout time.Duration `yaml:"coalesce_timeout,omitempty" json:"coalesce_timeout,omitempty"`
}

// LimitPolicy bounds requests.
type LimitPolicy struct {
	// MaxRequestBytes caps the encoded size of one request. Zero means 10 MiB.
	MaxRequestBytes int `yaml:"max_request_bytes,omitempty" json:"max_request_bytes,omitempty"`
	// DefaultDeadline applies when the caller sets none. Zero means 120s.
	DefaultDeadline Duration `yaml:"default_deadline,omitempty" json:"default_deadline,omitempty"`
	// TenantQPS is the quota of each caller not listed in tenants (keyed by
	// its tenant name). Zero means no quota.
	TenantQPS float64 `yaml:"tenant_qps,omitempty" json:"tenant_qps,omitempty"`
	// MaxInflight caps the detour.v1.Router calls (Complete and
	// StreamComplete together, streams until they end) one replica runs at
	// once; a call beyond it is refused at once with RESOURCE_EXHAUSTED and a
	// RetryInfo, before it is read, routed or counted against a quota. Size
	// it as the peak calls per second a replica should carry times the
	// longest call it should carry at that rate (upstream latency, not
	// detour's). Zero means no limit.
	MaxInflight int `yaml:"max_inflight,omitempty" json:"max_inflight,omitempty"`
	// MaxHops is how many detour instances may pass a call on before this
	// one (its x-detour-hops metadata, which detour's kind: detour client
	// sets); a call over it is a routing loop, refused with
	// FAILED_PRECONDITION, which the detour that sent it counts against
	// that backend before it tries another. Zero means 4.
	MaxHops int `yaml:"max_hops,omitempty" json:"max_hops,omitempty"`
}

// Defaults.
const (
	DefaultMaxAttempts        = 3
	DefaultBudgetRatio        = 0.8
	DefaultBudgetMinPerSecond = 10
	DefaultBackoffBase        = 25 * time.Millisecond
	DefaultBackoffMax         = time.Second
	DefaultAttemptTimeout     = 30 * time.Second
	DefaultMaxRequestBytes    = 10 << 20
	DefaultMaxQueueWait       = time.Second
	DefaultSpillFactor        = 1.0
	DefaultDeadline           = 120 * time.Second
	DefaultExhaustedFor       = 5 * time.Minute
)

// ExhaustedCooldown returns how long b stays out of rotation after an
// "account exhausted" answer: ExhaustedFor, or DefaultExhaustedFor.
func (b Backend) ExhaustedCooldown() time.Duration {
	if b.ExhaustedFor > 0 {
		return b.ExhaustedFor.D()
	}
	return DefaultExhaustedFor
}

// Duration is a time.Duration written as "250ms", "30s" in the document.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML accepts a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like \"250ms\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// MarshalText writes d as a Go duration string (JSON and flags).
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ErrInvalid is wrapped by every validation failure; errors.As to
// *ValidationError gives each reason.
var ErrInvalid = errors.New("invalid config")

// ValidationError lists every reason a document was rejected.
type ValidationError struct {
	Reasons []string

	mistyped []string // paths of values that did not decode (see JoinReasons)
}

func (e *ValidationError) Error() string {
	return "invalid config: " + strings.Join(e.Reasons, "; ")
}

func (e *ValidationError) Unwrap() error { return ErrInvalid }

// Parse decodes a YAML (or JSON) document strictly: a field the schema
// lacks, a key given twice or a value of the wrong kind is an error. It does
// not validate; call Validate.
//
// Its error is a *ValidationError with one reason per problem, named by its
// path in the document and its line ("retry.max_attempt: unknown field, did
// you mean max_attempts? (line 7)"). For a document that is well-formed YAML
// Parse also returns, with that error, the Config decoded from everything
// else, so that its semantic problems can be reported too (JoinReasons;
// Load does): such a Config must never be served. For malformed YAML the
// Config is nil.
func Parse(doc []byte) (*Config, error) {
	c, de := parse(doc)
	if de == nil {
		return c, nil
	}
	return c, &ValidationError{Reasons: de.reasons, mistyped: de.mistyped}
}

// Load parses and validates a document. A document that does not decode is
// still validated where it can be: the reasons of both are reported.
func Load(doc []byte) (*Config, error) {
	c, err := Parse(doc)
	if c == nil {
		return nil, err
	}
	verr := c.Validate()
	if err != nil || verr != nil {
		return nil, JoinReasons(err, verr)
	}
	return c, nil
}

// LoadFile reads, parses and validates the document at path.
func LoadFile(path string) (*Config, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Load(doc)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate checks the document as a whole and returns a *ValidationError with
// every reason, or nil.
func (c *Config) Validate() error {
	var v validator
	regionNames := map[string]bool{}
	backendNames := map[string]string{}
	usable := 0
	for i, r := range c.Regions {
		where := fmt.Sprintf("regions[%d]", i)
		if r.Name == "" {
			v.add("%s: name is required", where)
		} else if regionNames[r.Name] {
			v.add("%s: duplicate region name %q", where, r.Name)
		}
		regionNames[r.Name] = true
		if r.Priority < 0 {
			v.add("%s: priority %d must be >= 0", where, r.Priority)
		}
		if len(r.Backends) == 0 {
			v.add("%s (%s): at least one backend is required", where, r.Name)
		}
		for j, b := range r.Backends {
			bw := fmt.Sprintf("%s.backends[%d]", where, j)
			v.backend(bw, b, backendNames)
			if !b.Drained {
				usable++
			}
		}
	}
	if len(c.Regions) == 0 {
		v.add("regions: at least one region is required")
	} else if usable == 0 {
		v.add("regions: every backend is drained; at least one usable backend is required")
	}
	for i, b := range c.Fallbacks {
		v.backend(fmt.Sprintf("fallbacks[%d]", i), b, backendNames)
	}
	r := c.Retry
	if r.MaxAttempts < 0 || r.MaxAttempts > 10 {
		v.add("retry.max_attempts: %d must be in 0..10", r.MaxAttempts)
	}
	if r.BackoffBase < 0 || r.BackoffMax < 0 || r.AttemptTimeout < 0 || r.HedgeAfter < 0 {
		v.add("retry: durations must be >= 0")
	}
	if r.BackoffMax > 0 && r.BackoffBase > r.BackoffMax {
		v.add("retry.backoff_base %s exceeds backoff_max %s", r.BackoffBase.D(), r.BackoffMax.D())
	}
	if !inRange(r.BudgetRatio, 0, 1) {
		v.add("retry.budget_ratio: %g must be in 0..1", r.BudgetRatio)
	}
	if !inRange(r.BudgetMinPerSecond, 0, math.MaxFloat64) {
		v.add("retry.budget_min_per_second: %g must be >= 0", r.BudgetMinPerSecond)
	}
	v.breaker("breaker", c.Breaker)
	v.capacity("capacity", c.Capacity)
	if c.Limits.MaxRequestBytes < 0 {
		v.add("limits.max_request_bytes: %d must be >= 0", c.Limits.MaxRequestBytes)
	}
	if c.Limits.DefaultDeadline < 0 {
		v.add("limits.default_deadline: must be >= 0")
	}
	if !inRange(c.Limits.TenantQPS, 0, math.MaxFloat64) {
		v.add("limits.tenant_qps: %g must be >= 0", c.Limits.TenantQPS)
	}
	if c.Limits.MaxInflight < 0 {
		v.add("limits.max_inflight: %d must be >= 0", c.Limits.MaxInflight)
	}
	if c.Limits.MaxHops < 0 || c.Limits.MaxHops > 100 {
		v.add("limits.max_hops: %d must be in 0..100", c.Limits.MaxHops)
	}
	v.cache(c.Cache)
	v.streams(c.Streams)
	principals := map[string]string{}
	names := map[string]string{} // tenants and admins share one namespace
	for i, t := range c.Tenants {
		where := fmt.Sprintf("tenants[%d]", i)
		v.principal(where, t.Principal, principals, names)
		if !inRange(t.QPS, 0, math.MaxFloat64) || t.Burst < 0 {
			v.add("%s: qps and burst must be >= 0", where)
		}
	}
	for i, a := range c.Admins {
		v.principal(fmt.Sprintf("admins[%d]", i), a, principals, names)
	}
	v.spend(c)
	return v.err()
}

// inRange reports lo <= x <= hi; NaN and infinities are out of range.
func inRange(x, lo, hi float64) bool { return x >= lo && x <= hi }

type validator struct{ reasons []string }

func (v *validator) add(format string, args ...any) {
	v.reasons = append(v.reasons, fmt.Sprintf(format, args...))
}

func (v *validator) err() error {
	if len(v.reasons) == 0 {
		return nil
	}
	return &ValidationError{Reasons: v.reasons}
}

// principal checks p; seen maps each credential, and names each name, to
// the principal that used it first.
func (v *validator) principal(where string, p Principal, seen, names map[string]string) {
	switch prev, dup := names[p.Name]; {
	case p.Name == "":
		v.add("%s: name is required", where)
	case dup:
		// One name for two principals: their quotas, logs and metrics
		// would mix, and a tenant could pass for an admin in them.
		v.add("%s (%s): duplicate principal name, first used at %s", where, p.Name, prev)
	default:
		names[p.Name] = where
	}
	for _, id := range append(slices.Clone(p.Identities), p.TokenSHA256...) {
		if prev, dup := seen[id]; dup {
			v.add("%s (%s): credential %s is also used by %s", where, p.Name, clipID(id), prev)
		}
		seen[id] = fmt.Sprintf("%s (%s)", where, p.Name)
	}
	for i, h := range p.TokenSHA256 {
		if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
			v.add("%s (%s): token_sha256[%d] must be 64 hex digits (a SHA-256 digest, never the token)", where, p.Name, i)
		}
	}
}

// clipID shortens a credential for an error message.
func clipID(s string) string {
	if len(s) > 16 {
		return s[:16] + "..."
	}
	return s
}

func (v *validator) breaker(where string, br BreakerPolicy) {
	if br.ConsecutiveFailures < 0 || br.ConsecutiveBusy < 0 || br.MinRequests < 0 || br.HalfOpenProbes < 0 {
		v.add("%s: counts must be >= 0", where)
	}
	if !inRange(br.BusyRatio, 0, 1) {
		v.add("%s.busy_ratio: %g must be in 0..1", where, br.BusyRatio)
	}
	if br.Window < 0 || br.OpenFor < 0 || br.MaxOpen < 0 {
		v.add("%s: durations must be >= 0", where)
	}
	if br.MaxOpen > 0 && br.OpenFor > br.MaxOpen {
		v.add("%s.open_for %s exceeds max_open %s", where, br.OpenFor.D(), br.MaxOpen.D())
	}
}

func (v *validator) capacity(where string, c CapacityPolicy) {
	if c.InitialLimit < 0 || c.MinLimit < 0 || c.MaxLimit < 0 {
		v.add("%s: limits must be >= 0", where)
	}
	if c.MaxLimit > 0 && c.MinLimit > c.MaxLimit {
		v.add("%s.min_limit %d exceeds max_limit %d", where, c.MinLimit, c.MaxLimit)
	}
	if c.MaxLimit > 0 && c.InitialLimit > c.MaxLimit {
		v.add("%s.initial_limit %d exceeds max_limit %d", where, c.InitialLimit, c.MaxLimit)
	}
	if !inRange(c.QueueFactor, 0, 1000) {
		v.add("%s.queue_factor: %g must be in 0..1000", where, c.QueueFactor)
	}
	if !inRange(c.SpillFactor, 0, 100) {
		v.add("%s.spill_factor: %g must be in 0..100", where, c.SpillFactor)
	}
}

func (v *validator) cache(c CachePolicy) {
	for _, f := range []struct {
		name     string
		negative bool
	}{
		{"ttl", c.TTL < 0},
		{"max_ttl", c.MaxTTL < 0},
		{"max_entry_bytes", c.MaxEntryBytes < 0},
		{"redis_timeout", c.RedisTimeout < 0},
		{"coalesce_timeout", c.CoalesceTimeout < 0},
	} {
		if f.negative {
			v.add("cache.%s must be >= 0", f.name)
		}
	}
	if c.TTL > 0 && c.MaxTTL > 0 && c.TTL > c.MaxTTL {
		v.add("cache.ttl %v exceeds cache.max_ttl %v", c.TTL, c.MaxTTL)
	}
	if c.Scope != "" && c.Scope != "tenant" && c.Scope != "shared" {
		v.add("cache.scope %q must be %q or %q", c.Scope, "tenant", "shared")
	}
}

func (v *validator) backend(where string, b Backend, seen map[string]string) {
	if b.Name == "" {
		v.add("%s: name is required", where)
	} else {
		where = fmt.Sprintf("%s (%s)", where, b.Name)
		if prev, dup := seen[b.Name]; dup {
			v.add("%s: duplicate backend name, first used at %s", where, prev)
		} else {
			seen[b.Name] = where
		}
	}
	switch b.Kind {
	case "", KindOpenAI:
		if b.Endpoint == "" {
			v.add("%s: endpoint is required", where)
		} else if u, err := url.Parse(b.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add("%s: endpoint %q must be an http:// or https:// URL", where, b.Endpoint)
		}
	case KindDetour:
		if b.Endpoint == "" {
			v.add("%s: endpoint is required", where)
		} else if strings.Contains(b.Endpoint, "://") && !strings.HasPrefix(b.Endpoint, "dns:///") {
			v.add("%s: endpoint %q must be host:port or dns:///host:port", where, b.Endpoint)
		}
	default:
		v.add("%s: kind %q must be %q or %q", where, b.Kind, KindOpenAI, KindDetour)
	}
	if why := unsafeEndpoint(b.Kind, b.Endpoint); why != "" && !b.AllowUnsafeEndpoint {
		v.add("%s: %s; set allow_unsafe_endpoint: true if this is intended", where, why)
	}
	if b.Weight < 0 || b.Weight > 1000 {
		v.add("%s: weight %d must be in 0..1000", where, b.Weight)
	}
	if !inRange(b.QPS, 0, math.MaxFloat64) {
		v.add("%s: qps %g must be >= 0", where, b.QPS)
	}
	if b.MaxConcurrency < 0 {
		v.add("%s: max_concurrency %d must be >= 0", where, b.MaxConcurrency)
	}
	if b.Timeout < 0 {
		v.add("%s: timeout must be >= 0", where)
	}
	if b.QueueTimeout < 0 {
		v.add("%s: queue_timeout must be >= 0", where)
	}
	if b.FirstTokenTimeout < 0 {
		v.add("%s: first_token_timeout must be >= 0", where)
	}
	if b.ExhaustedFor < 0 {
		v.add("%s: exhausted_for must be >= 0", where)
	}
	switch b.SendTenantAs {
	case "", TenantAsUser, TenantAsUserID:
	default:
		v.add("%s: send_tenant_as %q must be %q, %q or empty", where, b.SendTenantAs, TenantAsUser, TenantAsUserID)
	}
	if b.APIKeyEnv != "" && b.APIKeyFile != "" {
		v.add("%s: set api_key_env or api_key_file, not both", where)
	}
	if b.APIKeyEnv != "" {
		if err := checkKeyEnv(b.APIKeyEnv); err != nil {
			v.add("%s: api_key_env %s: %v", where, b.APIKeyEnv, err)
		} else if _, ok := os.LookupEnv(b.APIKeyEnv); !ok {
			v.add("%s: api_key_env %s is not set", where, b.APIKeyEnv)
		}
	}
	if b.APIKeyFile != "" {
		if err := checkKeyFile(b.APIKeyFile); err != nil {
			v.add("%s: api_key_file %s: %v", where, b.APIKeyFile, err)
		} else if _, err := os.Stat(b.APIKeyFile); err != nil {
			v.add("%s: api_key_file: %v", where, err)
		}
	}
	if b.Breaker != nil {
		v.breaker(where+".breaker", *b.Breaker)
	}
	if t := b.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			v.add("%s: tls.cert_file and tls.key_file go together", where)
		}
		for _, f := range []string{t.CAFile, t.CertFile, t.KeyFile} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				v.add("%s: tls: %v", where, err)
			}
		}
		if (b.Kind == "" || b.Kind == KindOpenAI) && strings.HasPrefix(b.Endpoint, "http://") {
			v.add("%s: tls is set but endpoint %q is http://", where, b.Endpoint)
		}
	}
	if c := b.Connections; c != nil {
		v.connections(where, b, *c)
	}
	for i, m := range b.Models {
		if strings.TrimSpace(m) == "" {
			v.add("%s: models[%d] is empty", where, i)
		}
	}
}

func (v *validator) connections(where string, b Backend, c BackendConnections) {
	where += ".connections"
	if b.Kind == KindDetour {
		v.add("%s: applies to kind openai only (a detour backend's one gRPC connection multiplexes its calls already)", where)
		return
	}
	switch c.HTTP2 {
	case "", HTTP2Auto, HTTP2Off:
	case HTTP2H2C:
		if strings.HasPrefix(b.Endpoint, "https://") {
			v.add("%s.http2: h2c is HTTP/2 without TLS, but endpoint %q is https:// (auto negotiates h2 over TLS)", where, b.Endpoint)
		}
	default:
		v.add("%s.http2: %q must be %q, %q or %q", where, c.HTTP2, HTTP2Auto, HTTP2H2C, HTTP2Off)
	}
	if c.MaxConns < 0 {
		v.add("%s.max_conns: %d must be >= 0", where, c.MaxConns)
	}
	if c.MaxIdleConns < 0 {
		v.add("%s.max_idle_conns: %d must be >= 0", where, c.MaxIdleConns)
	}
	if c.MaxConns > 0 && c.MaxIdleConns > c.MaxConns {
		v.add("%s.max_idle_conns %d exceeds max_conns %d", where, c.MaxIdleConns, c.MaxConns)
	}
	if c.IdleTimeout < 0 {
		v.add("%s.idle_timeout must be >= 0", where)
	}
	if c.PingTimeout < 0 {
		v.add("%s.ping_timeout must be >= 0", where)
	}
}

// Serves reports whether the backend serves model.
func (b *Backend) Serves(model string) bool {
	if len(b.Models) == 0 {
		return true
	}
	for _, m := range b.Models {
		if m == model {
			return true
		}
	}
	return false
}

// APIKey reads the backend's API key from its env var or file; "" when none is
// configured. The error never contains the key. It refuses a variable or a
// file outside the places keys may come from (see keys.go), whatever
// validated the document.
func (b *Backend) APIKey() (string, error) {
	switch {
	case b.APIKeyEnv != "" && checkKeyEnv(b.APIKeyEnv) != nil:
		return "", fmt.Errorf("backend %s: api_key_env %s: %w", b.Name, b.APIKeyEnv, checkKeyEnv(b.APIKeyEnv))
	case b.APIKeyFile != "" && checkKeyFile(b.APIKeyFile) != nil:
		return "", fmt.Errorf("backend %s: api_key_file %s: %w", b.Name, b.APIKeyFile, checkKeyFile(b.APIKeyFile))
	case b.APIKeyEnv != "":
		k, ok := os.LookupEnv(b.APIKeyEnv)
		if !ok {
			return "", fmt.Errorf("backend %s: api_key_env %s is not set", b.Name, b.APIKeyEnv)
		}
		return strings.TrimSpace(k), nil
	case b.APIKeyFile != "":
		k, err := os.ReadFile(b.APIKeyFile)
		if err != nil {
			return "", fmt.Errorf("backend %s: api_key_file: %w", b.Name, err)
		}
		return strings.TrimSpace(string(k)), nil
	}
	return "", nil
}

// EffectiveWeight is Weight with the zero default applied.
func (b *Backend) EffectiveWeight() int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}
