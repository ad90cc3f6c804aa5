package main

import (
	"fmt"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/regions"
)

// TestConfigsAreTheTemplates holds each scenario's config, now built from
// the schema's types, to the YAML template it replaced: both load into the
// same regions.Config.
func TestConfigsAreTheTemplates(t *testing.T) {
	const ep, ep2, grpcAddr = "http://127.0.0.1:8081/v1", "http://127.0.0.1:8082/v1", "127.0.0.1:9090"
	chaosStack := &chaosStack{proxies: map[string]*toxiproxy.Proxy{}}
	for i, n := range []string{"east-a", "east-b", "west-a", "fallback"} {
		chaosStack.proxies[n] = &toxiproxy.Proxy{Listen: fmt.Sprintf("127.0.0.1:%d", 7000+i)}
	}
	limited := chaosStack.config(chaosOpts{attemptTimeout: time.Second})
	limited.Limits.MaxInflight = 32
	prop := &propagation{}
	tests := []struct {
		name     string
		cfg      *regions.Config
		template string
	}{
		{name: "seq", cfg: seqConfig(ep), template: fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-http
        endpoint: %[1]s
        qps: 1000000
        max_concurrency: 100000
fallbacks:
  - name: fallback-http
    endpoint: %[1]s
limits:
  tenant_qps: 1000000
cache:
  disabled: true
`, ep)},
		{name: "hop", cfg: hopConfig(grpcAddr), template: fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-grpc
        kind: detour
        endpoint: %[1]s
        qps: 1000000
        max_concurrency: 100000
fallbacks:
  - name: fallback-grpc
    kind: detour
    endpoint: %[1]s
limits:
  tenant_qps: 1000000
cache:
  disabled: true
`, grpcAddr)},
		{name: "cachehit", cfg: chConfig(grpcAddr), template: fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-grpc
        kind: detour
        endpoint: %s
        qps: 1000000
        max_concurrency: 100000
limits:
  tenant_qps: 1000000
`, grpcAddr)},
		{name: "sharedstate", cfg: ssConfig(regions.KindDetour, grpcAddr, 10000), template: fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake
        kind: %s
        endpoint: %s
        qps: %s
        max_concurrency: 100000
limits:
  tenant_qps: 1000000
`, "detour", grpcAddr, "10000")},
		{name: "soak", cfg: soakConfig(map[string]string{"east-a": ep, "east-b": ep2, "west-a": ep, "fallback": ep2}), template: fmt.Sprintf(`regions:
  - name: east
    backends:
      - {name: east-a, endpoint: %q}
      - {name: east-b, endpoint: %q}
  - name: west
    priority: 1
    backends:
      - {name: west-a, endpoint: %q}
fallbacks:
  - {name: fallback, endpoint: %q}
retry:
  attempt_timeout: 2s
`, ep, ep2, ep, ep2)},
		{name: "chaos, limited", cfg: limited, template: `regions:
  - name: east
    backends:
      - {name: east-a, endpoint: "http://127.0.0.1:7000/v1", zone: east-1a}
      - {name: east-b, endpoint: "http://127.0.0.1:7001/v1", zone: east-1b}
  - name: west
    priority: 1
    backends:
      - {name: west-a, endpoint: "http://127.0.0.1:7002/v1"}
fallbacks:
  - {name: fallback, endpoint: "http://127.0.0.1:7003/v1"}
retry:
  attempt_timeout: 1s
limits:
  max_inflight: 32
`},
		{name: "propagation edit 3", cfg: func() *regions.Config {
			doc, err := prop.docFor(ep, ep2, 3)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := regions.Load(doc)
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}(), template: fmt.Sprintf(`regions:
  - name: a
    backends:
      - name: a-1
        endpoint: %s
        weight: %d
      - name: a-2
        endpoint: %s
        weight: %d
`, ep, 4, ep2, 7)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := configYAML(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := regions.Load([]byte(doc))
			if err != nil {
				t.Fatalf("the built document does not load: %v\n%s", err, doc)
			}
			want, err := regions.Load([]byte(tt.template))
			if err != nil {
				t.Fatalf("template: %v", err)
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("config (-built +template):\n%s\n%s", diff, doc)
			}
		})
	}
}

func TestConfigYAMLRefusesWhatDetourWould(t *testing.T) {
	if _, err := configYAML(&regions.Config{}); err == nil {
		t.Error("a config without regions was marshalled")
	}
}
