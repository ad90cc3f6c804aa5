// Package regions holds detour's routing document: the config schema, its
// validation, and the registry that publishes immutable snapshots of it.
//
// Readers take the current *Snapshot with Registry.Current and never lock; a
// new document replaces the snapshot atomically, so an in-flight call keeps
// the snapshot it started with.
package regions

import (
	"sync/atomic"
	"time"
)

// Snapshot is one applied, validated document. It is immutable and safe for
// concurrent use.
type Snapshot struct {
	Config *Config
	// Revision is the etcd mod revision of the document, or 0 for a file.
	Revision int64
	// Source says where the document came from: "file:PATH", "etcd:KEY", ...
	Source string
	// AppliedAt is when the snapshot was published.
	AppliedAt time.Time
}

// Registry holds the current snapshot. It is safe for concurrent use; Current
// never blocks.
type Registry struct {
	cur  atomic.Pointer[Snapshot]
	subs atomic.Pointer[[]func(*Snapshot)]
}

// NewRegistry returns a registry serving s.
func NewRegistry(s *Snapshot) *Registry {
	r := &Registry{}
	r.cur.Store(s)
	return r
}

// Current returns the snapshot in force.
func (r *Registry) Current() *Snapshot { return r.cur.Load() }

// Publish makes s the current snapshot and calls every subscriber with it.
func (r *Registry) Publish(s *Snapshot) {
	r.cur.Store(s)
	if subs := r.subs.Load(); subs != nil {
		for _, f := range *subs {
			f(s)
		}
	}
}

// Subscribe registers f to be called, in the publisher's goroutine, with each
// snapshot published after this call. f must not block.
func (r *Registry) Subscribe(f func(*Snapshot)) {
	for {
		old := r.subs.Load()
		var next []func(*Snapshot)
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, f)
		if r.subs.CompareAndSwap(old, &next) {
			return
		}
	}
}
