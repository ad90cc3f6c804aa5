// Package regions holds detour's routing document: the config schema, its
// validation, and the immutable Snapshot in which an applied document is
// published to the router.
package regions

import "time"

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
