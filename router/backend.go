package router

import (
	"context"
	"io"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
	"github.com/detour-dev/detour/regions"
)

// Provider calls one upstream backend. Implementations are safe for
// concurrent use and return promptly when ctx ends.
type Provider interface {
	Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error)
	Stream(ctx context.Context, req *detourv1.CompleteRequest) (ChunkStream, error)
}

// ChunkStream is one streamed answer: Recv returns io.EOF after the last
// chunk of a complete stream; Close may be called at any time, more than once.
// It is an alias so that provider's clients satisfy Provider as they are.
type ChunkStream = provider.ChunkStream

// backend is one upstream with its live state. Its config is immutable; the
// state (in-flight count, breaker) survives config reloads that leave the
// backend's config unchanged.
type backend struct {
	cfg      regions.Backend
	region   string
	fallback bool
	kind     detourv1.ProviderKind
	prov     Provider
	br       *breaker.Breaker
	policy   regions.BreakerPolicy

	inflight atomic.Int64
	drained  atomic.Bool
	removed  atomic.Bool
	closer   sync.Once
}

func (b *backend) servedBy() *detourv1.ServedBy {
	return &detourv1.ServedBy{Region: b.region, Backend: b.cfg.Name, Kind: b.kind, Zone: b.cfg.Zone}
}

// release ends one call; the last call on a removed backend closes its client.
func (b *backend) release() {
	if b.inflight.Add(-1) == 0 && b.removed.Load() {
		b.close()
	}
}

func (b *backend) retire() {
	b.removed.Store(true)
	if b.inflight.Load() == 0 {
		b.close()
	}
}

func (b *backend) close() {
	b.closer.Do(func() {
		if c, ok := b.prov.(io.Closer); ok {
			c.Close()
		}
	})
}

// sameBackend reports whether a reload may keep the backend's state.
func sameBackend(a, b *backend) bool {
	ac, bc := a.cfg, b.cfg
	ac.Drained, bc.Drained = false, false // draining is state, not identity
	return a.region == b.region && a.fallback == b.fallback && a.policy == b.policy && reflect.DeepEqual(ac, bc)
}

func kindOf(k string) detourv1.ProviderKind {
	if k == regions.KindDetour {
		return detourv1.ProviderKind_PROVIDER_KIND_DETOUR
	}
	return detourv1.ProviderKind_PROVIDER_KIND_OPENAI
}
