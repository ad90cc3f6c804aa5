package regions

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
)

func TestLoadFull(t *testing.T) {
	t.Setenv("DETOUR_KEY_TEST", "sk-test")
	c, err := LoadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Regions[0].Backends[0]
	got := []any{len(c.Regions), b.Timeout.D(), b.Breaker.ConsecutiveBusy, c.Retry.BackoffBase.D(), c.Limits.DefaultDeadline.D(), c.Limits.MaxInflight, c.Regions[1].Backends[0].Kind,
		b.QueueTimeout.D(), b.ExhaustedCooldown(), b.SendTenantAs, c.Regions[1].Backends[0].ExhaustedCooldown(),
		b.FirstTokenTimeout.D(), b.PrefixCompletion, c.Streams}
	want := []any{2, 20 * time.Second, 3, 10 * time.Millisecond, time.Minute, 512, KindDetour,
		5 * time.Minute, 10 * time.Minute, TenantAsUserID, DefaultExhaustedFor,
		2 * time.Minute, true, StreamPolicy{FirstTokenTimeout: Duration(30 * time.Second), HedgeAfter: Duration(2 * time.Second),
			Continuation: true, ContinuePrompt: "Continue.", MaxContinuations: 3}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("decoded fields (-got +want):\n%s", diff)
	}
	key, err := b.APIKey()
	if err != nil || key != "sk-test" {
		t.Errorf("APIKey() = %q, %v; want the env var's value", key, err)
	}
}

func TestValidateListsEveryReason(t *testing.T) {
	os.Unsetenv("DETOUR_KEY_MISSING")
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{name: "empty", doc: "", want: []string{"document is empty"}},
		{name: "no regions", doc: "fallbacks: []\n", want: []string{"regions: at least one region is required"}},
		{name: "unknown field", doc: "regions: []\nretires: {}\n", want: []string{
			"retires: unknown field; the fields here are admins, breaker, cache, capacity, fallbacks, limits, regions, retry, spend, streams, tenants (line 2)",
			"regions: at least one region is required",
		}},
		{name: "bad duration", doc: "regions: []\nretry:\n  backoff_base: soon\n", want: []string{
			`retry.backoff_base: want a duration such as "250ms" or "30s", got "soon" (line 3)`,
			"regions: at least one region is required",
		}},
		{
			name: "many problems",
			doc: `regions:
  - name: a
    backends:
      - name: x
        endpoint: ftp://nowhere
        weight: 5000
      - name: x
        kind: grpc
        endpoint: h:1
        qps: -1
  - name: a
    backends: []
  - name: b
    backends:
      - name: y
        endpoint: http://h/v1
        api_key_env: DETOUR_KEY_MISSING
        api_key_file: /nonexistent/key
      - name: z
        endpoint: http://h/v1
        queue_timeout: -1s
        first_token_timeout: -1s
        exhausted_for: -1m
        send_tenant_as: tenant
retry:
  max_attempts: 11
  budget_ratio: 2
breaker:
  busy_ratio: 1.5
limits:
  max_inflight: -1
streams:
  first_token_timeout: -1s
  hedge_after: -1s
  max_continuations: 11
`,
			want: []string{
				`regions[0].backends[0] (x): endpoint "ftp://nowhere" must be an http:// or https:// URL`,
				"regions[0].backends[0] (x): weight 5000 must be in 0..1000",
				"regions[0].backends[1] (x): duplicate backend name, first used at regions[0].backends[0] (x)",
				`regions[0].backends[1] (x): kind "grpc" must be "openai" or "detour"`,
				"regions[0].backends[1] (x): qps -1 must be >= 0",
				`regions[1]: duplicate region name "a"`,
				"regions[1] (a): at least one backend is required",
				"regions[2].backends[0] (y): set api_key_env or api_key_file, not both",
				"regions[2].backends[0] (y): api_key_env DETOUR_KEY_MISSING is not set",
				"regions[2].backends[0] (y): api_key_file /nonexistent/key: not a place a backend key may come from: api_key_file must be inside /var/run/secrets, /run/secrets, /etc/detour/keys (DETOUR_KEY_DIRS); see README, \"Secrets\"",
				"regions[2].backends[1] (z): queue_timeout must be >= 0",
				"regions[2].backends[1] (z): first_token_timeout must be >= 0",
				"regions[2].backends[1] (z): exhausted_for must be >= 0",
				`regions[2].backends[1] (z): send_tenant_as "tenant" must be "user", "user_id" or empty`,
				"retry.max_attempts: 11 must be in 0..10",
				"retry.budget_ratio: 2 must be in 0..1",
				"breaker.busy_ratio: 1.5 must be in 0..1",
				"limits.max_inflight: -1 must be >= 0",
				"streams.first_token_timeout must be >= 0",
				"streams.hedge_after must be >= 0",
				"streams.max_continuations: 11 must be in 0..10",
			},
		},
		{
			name: "cache",
			doc:  "regions:\n  - name: a\n    backends:\n      - name: x\n        endpoint: http://h/v1\ncache:\n  ttl: 2h\n  max_ttl: 1h\n  max_entry_bytes: -1\n  redis_timeout: -1ms\n  coalesce_timeout: -1s\n  stale_window: -1s\n  max_bytes: -1\n  scope: everyone\n",
			want: []string{
				"cache.max_entry_bytes must be >= 0",
				"cache.redis_timeout must be >= 0",
				"cache.coalesce_timeout must be >= 0",
				"cache.ttl 2h0m0s exceeds cache.max_ttl 1h0m0s",
				`cache.scope "everyone" must be "tenant" or "shared"`,
			},
		},
		{
			name: "negative cache ttls",
			doc:  "regions:\n  - name: a\n    backends:\n      - name: x\n        endpoint: http://h/v1\ncache:\n  ttl: -1s\n  max_ttl: -1s\n",
			want: []string{"cache.ttl must be >= 0", "cache.max_ttl must be >= 0"},
		},
		{
			name: "connections",
			doc: `regions:
  - name: a
    backends:
      - name: x
        endpoint: https://h/v1
        connections: {http2: h2c, max_conns: -1, max_idle_conns: -2, idle_timeout: -1s, ping_timeout: -1s}
      - name: y
        endpoint: http://h/v1
        connections: {http2: "on", max_conns: 4, max_idle_conns: 8}
      - name: z
        kind: detour
        endpoint: h:1
        connections: {http2: h2c}
      - name: w
        endpoint: http://h/v1
        connections: {http2: h2c, max_conns: 4, max_idle_conns: 4, idle_timeout: 1m, ping_timeout: 15s}
`,
			want: []string{
				`regions[0].backends[0] (x).connections.http2: h2c is HTTP/2 without TLS, but endpoint "https://h/v1" is https:// (auto negotiates h2 over TLS)`,
				"regions[0].backends[0] (x).connections.max_conns: -1 must be >= 0",
				"regions[0].backends[0] (x).connections.max_idle_conns: -2 must be >= 0",
				"regions[0].backends[0] (x).connections.idle_timeout must be >= 0",
				"regions[0].backends[0] (x).connections.ping_timeout must be >= 0",
				`regions[0].backends[1] (y).connections.http2: "on" must be "auto", "h2c" or "off"`,
				"regions[0].backends[1] (y).connections.max_idle_conns 8 exceeds max_conns 4",
				"regions[0].backends[2] (z).connections: applies to kind openai only (a detour backend's one gRPC connection multiplexes its calls already)",
			},
		},
		{
			name: "all drained",
			doc:  "regions:\n  - name: a\n    backends:\n      - name: x\n        endpoint: http://h/v1\n        drained: true\n",
			want: []string{"regions: every backend is drained; at least one usable backend is required"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]byte(tt.doc))
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load error = %v, want a *ValidationError wrapping ErrInvalid", err)
			}
			if diff := cmp.Diff(ve.Reasons, tt.want); diff != "" {
				t.Errorf("reasons (-got +want):\n%s", diff)
			}
		})
	}
}

func TestAPIKeyFromFile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(KeyDirsVar, dir)
	b := Backend{Name: "x", APIKeyFile: dir + "/missing"}
	_, err := b.APIKey()
	if err == nil {
		t.Fatal("APIKey on a missing file succeeded")
	}
	if err := os.WriteFile(dir+"/key", []byte("sk-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.APIKeyFile = dir + "/key"
	k, err := b.APIKey()
	if err != nil || k != "sk-secret-value" {
		t.Errorf("APIKey() = %q, %v; want the trimmed file content", k, err)
	}
}

// TestKeysOnlyFromKeyPlaces: a document cannot point a backend's key at any
// variable or file of the process (api_key_env: DETOUR_ETCD_PASSWORD would
// send detour's etcd password to the backend as a bearer token): only
// DETOUR_KEY_* variables (and ones the deployer allows) and files inside the
// key directories, links resolved.
func TestKeysOnlyFromKeyPlaces(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"keys/good": "sk-good", "outside": "etcd-password"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "outside"), filepath.Join(keys, "escape")); err != nil {
		t.Fatal(err)
	}
	t.Setenv(KeyDirsVar, keys)
	t.Setenv("DETOUR_ETCD_PASSWORD", "etcd-password")
	t.Setenv("DETOUR_KEY_DEEPSEEK", "sk-good")
	t.Setenv("LEGACY_DEEPSEEK_KEY", "sk-good")
	tests := []struct {
		name    string
		b       Backend
		wantErr bool
	}{
		{"a DETOUR_KEY_ variable", Backend{APIKeyEnv: "DETOUR_KEY_DEEPSEEK"}, false},
		{"detour's etcd password", Backend{APIKeyEnv: "DETOUR_ETCD_PASSWORD"}, true},
		{"another variable", Backend{APIKeyEnv: "LEGACY_DEEPSEEK_KEY"}, true},
		{"the prefix alone", Backend{APIKeyEnv: "DETOUR_KEY_"}, true},
		{"a file in the key directory", Backend{APIKeyFile: filepath.Join(keys, "good")}, false},
		{"a file outside it", Backend{APIKeyFile: filepath.Join(dir, "outside")}, true},
		{"a link out of it", Backend{APIKeyFile: filepath.Join(keys, "escape")}, true},
		{"a relative path", Backend{APIKeyFile: "keys/good"}, true},
		{"dot-dot out of it", Backend{APIKeyFile: keys + "/../outside"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			b.Name, b.Endpoint = "b", "https://api.example.com/v1"
			cfg := &Config{Regions: []Region{{Name: "r", Backends: []Backend{b}}}}
			err := cfg.Validate()
			if (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, want an error: %v", err, tt.wantErr)
			}
			if _, kerr := b.APIKey(); (kerr != nil) != tt.wantErr {
				t.Errorf("APIKey() error %v, want an error: %v", kerr, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "etcd-password") {
				t.Errorf("the error quotes a secret: %v", err)
			}
		})
	}
	// The deployer may allow a name.
	t.Setenv(KeyEnvAllowVar, "OTHER, LEGACY_DEEPSEEK_KEY")
	if _, err := (&Backend{Name: "b", APIKeyEnv: "LEGACY_DEEPSEEK_KEY"}).APIKey(); err != nil {
		t.Errorf("an allowed name: %v", err)
	}
}

// TestCachePolicyDocument holds the cache section to the README's names and
// zero values: every field decodes from its YAML name, and a Config written
// back reads the same.
func TestCachePolicyDocument(t *testing.T) {
	doc := `regions:
  - name: a
    backends:
      - name: x
        endpoint: http://h/v1
cache:
  disabled: true
  ttl: 5m
  max_ttl: 24h
  stale_window: 1h
  deterministic: true
  scope: shared
  per_user: true
  max_bytes: 67108864
  max_entry_bytes: 1048576
  local_only: true
  redis_timeout: 20ms
  coalesce_timeout: 2m
`
	c, err := Load([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := CachePolicy{Disabled: true, TTL: 5 * time.Minute, MaxTTL: 24 * time.Hour, StaleWindow: time.Hour,
		Deterministic: true, Scope: "shared", PerUser: true, MaxBytes: 64 << 20, MaxEntryBytes: 1 << 20, LocalOnly: true,
		RedisTimeout: 20 * time.Millisecond, CoalesceTimeout: 2 * time.Minute}
	if diff := cmp.Diff(c.Cache, want); diff != "" {
		t.Errorf("cache section (-got +want):\n%s", diff)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Load(out)
	if err != nil {
		t.Fatalf("the marshalled document does not load: %v\n%s", err, out)
	}
	if diff := cmp.Diff(again.Cache, want); diff != "" {
		t.Errorf("cache section after a round trip (-got +want):\n%s", diff)
	}
	if got, err := yaml.Marshal(&Config{}); err != nil || strings.Contains(string(got), "cache") {
		t.Errorf("a zero cache section is written as %q (%v), want it left out", got, err)
	}
}
