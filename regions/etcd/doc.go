// Package etcd keeps detour's routing document in etcd: the key layout
// (Keys), compare-and-swap reads and writes of the document and the drain
// keys (Store, what detourctl uses), the Watcher that follows them on every
// replica, and the last-known-good file a replica serves from when it starts
// while etcd is down. Package regions holds the schema and its validation
// and does no I/O; this package is where the document meets etcd and the
// disk.
//
// A replica follows the document with a Watcher, which publishes whole
// validated snapshots, never deltas:
//
//	w, err := etcd.NewWatcher(etcd.WatcherConfig{
//		Etcd:          etcd.Config{Endpoints: []string{"etcd-0.etcd:2379"}},
//		LastKnownGood: "/var/lib/detour/last-known-good.yaml",
//		Apply:         rt.Apply, // func(*regions.Snapshot) error
//	})
//	if err != nil { ... }
//	defer w.Close() // cancels and waits
//	<-w.Ready()     // a first snapshot is applied
//
// The Watcher reads every key in one consistent read, then watches from
// the next revision (WithRev(rev+1)), so no change falls between the two; a
// compaction or a broken watch makes it read in full again. A document that
// does not validate is rejected with every reason while the last good one
// keeps serving. Each applied document is written to the last-known-good
// file (a temp file, fsynced, renamed over the old one, and the directory
// fsynced) before WaitApplied returns.
//
// An admin tool edits the document as detourctl does: read it, validate
// the edit, and write it only if nobody else did meanwhile:
//
//	cli, err := etcd.Config{Endpoints: endpoints}.Client()
//	...
//	s := etcd.NewStore(cli, etcd.Keys{})
//	cur, err := s.Get(ctx)
//	...
//	rev, err := s.Put(ctx, edited, cur.ModRevision) // *ConflictError (ErrConflict) if it changed
package etcd
