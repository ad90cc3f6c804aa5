package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/detour-dev/detour/internal/backoff"
	"github.com/detour-dev/detour/regions"
)

// WatcherConfig configures a Watcher. Apply and either Client or
// Etcd.Endpoints are required.
type WatcherConfig struct {
	// Etcd says how to reach etcd and where the keys are.
	Etcd Config
	// Client, when set, is used instead of a client made from Etcd (whose
	// Prefix still applies). The Watcher does not close it.
	Client *clientv3.Client
	// Apply publishes a validated snapshot; it is router.Router.Apply in
	// detour. It is called from one goroutine at a time and never
	// concurrently with itself. An error rejects the document like a
	// validation failure: the previous snapshot keeps serving.
	Apply func(*regions.Snapshot) error
	// LastKnownGood is the path of the last-known-good file, written after
	// every document applied from etcd and served at start when etcd cannot
	// be read. Empty means no file.
	LastKnownGood string
	// ReadTimeout bounds one full read of the keys. At start, a read that
	// fails within it makes the Watcher serve the last-known-good file while
	// it keeps trying etcd. Zero means 5s.
	ReadTimeout time.Duration
	// Logger receives applies, rejections and etcd faults. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Metrics records applies and rejections. Nil records nothing.
	Metrics ConfigMetrics
}

// ConfigMetrics records config events; *metrics.Metrics implements it.
type ConfigMetrics interface {
	ConfigApplied(revision int64, at time.Time, lastKnownGood bool)
	ConfigRejected()
}

// Rejection is a document a Watcher refused, with every reason.
type Rejection struct {
	// Revision is the etcd revision of the refused state.
	Revision int64
	At       time.Time
	Reasons  []string
}

// RejectedError is returned by WaitApplied when the state at the revision
// waited for was rejected. It wraps regions.ErrInvalid.
type RejectedError struct{ Rejection *Rejection }

func (e *RejectedError) Error() string {
	return fmt.Sprintf("config at revision %d rejected: %s", e.Rejection.Revision, strings.Join(e.Rejection.Reasons, "; "))
}

func (e *RejectedError) Unwrap() error { return regions.ErrInvalid }

// ErrNotConnected is returned by Watcher.SetDrained before the Watcher has
// an etcd client (etcd needs authentication and has been unreachable).
var ErrNotConnected = errors.New("etcd is not connected")

// ErrDrainedByDocument is returned by Watcher.SetDrained when a backend
// stays drained after its drain key is removed: the document itself says
// drained: true.
var ErrDrainedByDocument = errors.New("backend is drained by the config document")

// Watcher keeps a router in step with the config in etcd. It reads the keys
// (see Keys) in full, validates the document as a whole with the drain keys
// merged in, hands a good one to Apply as a new regions.Snapshot, and then
// follows every change through an etcd watch:
//
//   - a bad document is rejected with every reason, logged, and kept as the
//     last Rejection, while the last good snapshot keeps serving;
//   - when etcd is unreachable the current snapshot keeps serving and the
//     client reconnects; a compaction or a broken watch makes it read in
//     full again from the current revision, so no change is lost;
//   - each applied document is written to the last-known-good file, and a
//     start while etcd is down serves from that file (Source
//     "last-known-good:PATH") until etcd answers.
//
// A Watcher is safe for concurrent use. Close stops it and waits.
//
//	w, err := etcd.NewWatcher(etcd.WatcherConfig{
//		Etcd:          etcd.Config{Endpoints: []string{"etcd-0.etcd:2379"}},
//		LastKnownGood: "/var/lib/detour/last-known-good.yaml",
//		Apply:         rt.Apply, // the first call may build the router instead
//	})
//	if err != nil { ... }
//	defer w.Close()
//	<-w.Ready() // a first snapshot is applied
type Watcher struct {
	cfg     WatcherConfig
	keys    Keys
	log     *slog.Logger
	timeout time.Duration

	cancel context.CancelFunc
	wg     sync.WaitGroup
	ready  chan struct{}

	mu         sync.Mutex
	cli        *clientv3.Client
	ownClient  bool
	applied    *regions.Snapshot
	processed  int64 // etcd revision of the latest state handled
	appliedRev int64 // etcd revision of the applied state (0: none from etcd)
	rejection  *Rejection
	changed    chan struct{} // closed and replaced whenever processed moves
	triedLKG   bool
}

// NewWatcher starts a Watcher. It returns at once; Ready tells when the
// first snapshot is applied.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Apply == nil {
		return nil, errors.New("etcd: WatcherConfig.Apply is required")
	}
	if cfg.Client == nil {
		if err := cfg.Etcd.Check(); err != nil {
			return nil, err
		}
	}
	w := &Watcher{
		cfg:     cfg,
		keys:    cfg.Etcd.Keys(),
		log:     cfg.Logger,
		timeout: cfg.ReadTimeout,
		ready:   make(chan struct{}),
		changed: make(chan struct{}),
		cli:     cfg.Client,
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.timeout <= 0 {
		w.timeout = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	if cfg.Client != nil {
		w.wg.Go(func() { w.monitor(ctx, cfg.Client) })
	}
	w.wg.Go(func() { w.run(ctx) })
	return w, nil
}

// Ready is closed once a first snapshot is applied, from etcd or from the
// last-known-good file.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Keys is the key layout the Watcher follows.
func (w *Watcher) Keys() Keys { return w.keys }

// Applied returns the snapshot applied last, or nil before the first.
func (w *Watcher) Applied() *regions.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.applied
}

// LastRejection returns the last rejected state, or nil when none was.
func (w *Watcher) LastRejection() *Rejection {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rejection
}

// Close stops watching and waits for the Watcher's goroutines. The applied
// snapshot stays in force in the router.
func (w *Watcher) Close() error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ownClient && w.cli != nil {
		w.ownClient = false
		return w.cli.Close()
	}
	return nil
}

// WaitApplied blocks until the Watcher has handled every change up to the
// etcd revision rev (a write under its prefix) or ctx ends. It returns nil
// when that state was applied and a *RejectedError when it was rejected.
func (w *Watcher) WaitApplied(ctx context.Context, rev int64) error {
	for {
		w.mu.Lock()
		processed, applied, rej, ch := w.processed, w.appliedRev, w.rejection, w.changed
		w.mu.Unlock()
		if processed >= rev {
			if applied >= rev || rej == nil || rej.Revision < rev {
				return nil
			}
			return &RejectedError{Rejection: rej}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for revision %d to apply: %w", rev, ctx.Err())
		}
	}
}

// SetDrained drains (drained true) or undrains backend on every replica by
// writing or deleting its drain key, then waits until this Watcher applied
// the change or ctx ends. A drain that would leave the document invalid
// (every primary drained) is refused with a *regions.ValidationError, without a
// write.
func (w *Watcher) SetDrained(ctx context.Context, backend string, drained bool, note string) error {
	w.mu.Lock()
	cli, applied := w.cli, w.applied
	w.mu.Unlock()
	if cli == nil {
		return ErrNotConnected
	}
	if drained && applied != nil {
		if err := withDrained(applied.Config, []string{backend}).Validate(); err != nil {
			return err
		}
	}
	rev, err := NewStore(cli, w.keys).SetDrained(ctx, backend, drained, note)
	if err != nil {
		return err
	}
	if err := w.WaitApplied(ctx, rev); err != nil {
		return err
	}
	if !drained {
		if s := w.Applied(); s != nil && isDrained(s.Config, backend) {
			return fmt.Errorf("%w: %s has drained: true in %s", ErrDrainedByDocument, backend, w.keys.Config())
		}
	}
	return nil
}

func isDrained(cfg *regions.Config, name string) bool {
	for _, r := range cfg.Regions {
		for _, b := range r.Backends {
			if b.Name == name {
				return b.Drained
			}
		}
	}
	for _, b := range cfg.Fallbacks {
		if b.Name == name {
			return b.Drained
		}
	}
	return false
}

// keyState is the content of the keys as of one revision.
type keyState struct {
	doc     []byte // nil: the config key is absent
	drained map[string]bool
	rev     int64
}

func (w *Watcher) run(ctx context.Context) {
	bo := backoff.Exponential{Base: 50 * time.Millisecond, Max: 5 * time.Second}
	retries := 0 // since the watch last made progress
	pause := func() {
		sleep(ctx, bo.Equal(retries))
		retries++
	}
	var st *keyState
	for ctx.Err() == nil {
		cli, err := w.client(ctx)
		if err != nil {
			w.unreachable(err)
			pause()
			continue
		}
		if st == nil {
			if st, err = w.read(ctx, cli); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.unreachable(err)
				pause()
				continue
			}
			w.evaluate(st)
		}
		progressed, compacted := w.follow(ctx, cli, st)
		st = nil // read in full again
		if progressed {
			retries = 0
		}
		if !compacted {
			pause()
		}
	}
}

// client returns the etcd client, creating it on first use. Creating it
// waits for etcd only when authentication is configured.
func (w *Watcher) client(ctx context.Context) (*clientv3.Client, error) {
	w.mu.Lock()
	cli := w.cli
	w.mu.Unlock()
	if cli != nil {
		return cli, nil
	}
	cli, err := w.cfg.Etcd.Client()
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.cli, w.ownClient = cli, true
	w.mu.Unlock()
	w.wg.Go(func() { w.monitor(ctx, cli) })
	return cli, nil
}

// read reads every key in one consistent read.
func (w *Watcher) read(ctx context.Context, cli *clientv3.Client) (*keyState, error) {
	rctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	d, err := NewStore(cli, w.keys).Get(rctx)
	if err != nil {
		return nil, err
	}
	st := &keyState{doc: d.Doc, drained: map[string]bool{}, rev: d.Revision}
	for _, b := range d.Drained {
		st.drained[b] = true
	}
	return st, nil
}

// follow applies every change after st.rev until the watch ends; then the
// keys must be read in full again. It reports whether any change arrived and
// whether the watch ended because the history was compacted.
func (w *Watcher) follow(ctx context.Context, cli *clientv3.Client, st *keyState) (progressed, compacted bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, w.keys.Dir(), clientv3.WithPrefix(), clientv3.WithRev(st.rev+1))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if resp.CompactRevision != 0 {
				w.log.Warn("etcd history compacted past the watched revision; reading the config in full",
					"watched_revision", st.rev, "compact_revision", resp.CompactRevision)
				return progressed, true
			}
			w.log.Warn("etcd watch ended; reading the config in full", "err", err, "revision", st.rev)
			return progressed, false
		}
		if len(resp.Events) == 0 {
			continue // progress notification
		}
		progressed = true
		for _, ev := range resp.Events {
			k := string(ev.Kv.Key)
			put := ev.Type == clientv3.EventTypePut
			switch {
			case k == w.keys.Config():
				st.doc = nil
				if put {
					st.doc = ev.Kv.Value
					if st.doc == nil {
						st.doc = []byte{}
					}
				}
			case strings.HasPrefix(k, w.keys.DrainDir()) && len(k) > len(w.keys.DrainDir()):
				name := k[len(w.keys.DrainDir()):]
				if put {
					st.drained[name] = true
				} else {
					delete(st.drained, name)
				}
			}
			st.rev = ev.Kv.ModRevision
		}
		w.evaluate(st)
	}
	if ctx.Err() == nil {
		w.log.Warn("etcd watch closed; reading the config in full", "revision", st.rev)
	}
	return progressed, false
}

// evaluate validates st and applies it, or records why not.
func (w *Watcher) evaluate(st *keyState) {
	snap, reasons := w.build(st)
	if reasons == nil {
		if err := w.cfg.Apply(snap); err != nil {
			reasons = []string{"apply: " + err.Error()}
		}
	}
	if reasons != nil {
		w.reject(st.rev, reasons)
		if w.Applied() == nil {
			w.serveLastKnownGood("the config in etcd was rejected")
		}
		return
	}
	w.mu.Lock()
	prev := w.applied
	w.applied = snap
	w.mu.Unlock()
	// Logged as soon as the router serves it (bench/propagation reads it).
	attrs := []any{"revision", snap.Revision, "source", snap.Source, "drained", drainedNames(st)}
	if prev != nil && strings.HasPrefix(prev.Source, SourceLastKnownGood) {
		attrs = append(attrs, "replaced", prev.Source)
	}
	w.log.Info("config applied", attrs...)
	if w.cfg.Metrics != nil {
		w.cfg.Metrics.ConfigApplied(snap.Revision, snap.AppliedAt, false)
	}
	// The file is written before WaitApplied returns, so that a change an
	// admin saw applied survives a restart while etcd is down.
	if p := w.cfg.LastKnownGood; p != "" {
		if err := WriteLastKnownGood(p, snap); err != nil {
			w.log.Error("cannot write the last-known-good file; a restart while etcd is down would have no config", "err", err)
		}
	}
	w.mu.Lock()
	w.appliedRev = st.rev
	w.advance(st.rev)
	w.mu.Unlock()
	w.markReady()
}

func drainedNames(st *keyState) []string {
	names := make([]string, 0, len(st.drained))
	for n := range st.drained {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// build turns st into a snapshot, or the reasons it is not valid.
func (w *Watcher) build(st *keyState) (*regions.Snapshot, []string) {
	if st.doc == nil {
		return nil, []string{fmt.Sprintf("no config document at %s", w.keys.Config())}
	}
	cfg, err := regions.Parse(st.doc)
	if cfg != nil { // also when it did not decode: report every reason
		cfg = withDrained(cfg, drainedNames(st))
		err = regions.JoinReasons(err, cfg.Validate())
	}
	if err != nil {
		var ve *regions.ValidationError
		if errors.As(err, &ve) {
			return nil, ve.Reasons
		}
		return nil, []string{err.Error()}
	}
	return &regions.Snapshot{Config: cfg, Revision: st.rev, Source: "etcd:" + w.keys.Config(), AppliedAt: time.Now()}, nil
}

func (w *Watcher) reject(rev int64, reasons []string) {
	r := &Rejection{Revision: rev, At: time.Now(), Reasons: reasons}
	w.mu.Lock()
	w.rejection = r
	w.advance(rev)
	serving := int64(-1)
	if w.applied != nil {
		serving = w.applied.Revision
	}
	w.mu.Unlock()
	if w.cfg.Metrics != nil {
		w.cfg.Metrics.ConfigRejected()
	}
	attrs := []any{"revision", rev, "reasons", reasons}
	if serving >= 0 {
		attrs = append(attrs, "serving_revision", serving)
	}
	w.log.Warn("config rejected; the last good config keeps serving", attrs...)
}

// advance records that the state at rev was handled. w.mu is held.
func (w *Watcher) advance(rev int64) {
	if rev > w.processed {
		w.processed = rev
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *Watcher) markReady() {
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}

// unreachable handles a failed attempt to reach etcd.
func (w *Watcher) unreachable(err error) {
	w.log.Warn("etcd unreachable; retrying", "err", err)
	if w.Applied() == nil {
		w.serveLastKnownGood("etcd is unreachable")
	}
}

// serveLastKnownGood applies the last-known-good file once, when nothing
// was applied yet.
func (w *Watcher) serveLastKnownGood(why string) {
	w.mu.Lock()
	tried := w.triedLKG
	w.triedLKG = true
	w.mu.Unlock()
	p := w.cfg.LastKnownGood
	if tried || p == "" {
		return
	}
	snap, err := ReadLastKnownGood(p)
	if err == nil {
		err = w.cfg.Apply(snap)
	}
	if err != nil {
		w.log.Error("no config to serve: "+why+" and the last-known-good file cannot be used; waiting for etcd", "err", err)
		return
	}
	w.mu.Lock()
	if w.applied == nil {
		w.applied = snap
	}
	w.mu.Unlock()
	w.markReady()
	if w.cfg.Metrics != nil {
		w.cfg.Metrics.ConfigApplied(snap.Revision, snap.AppliedAt, true)
	}
	w.log.Warn("serving the last-known-good config: "+why, "source", snap.Source, "revision", snap.Revision)
}

// monitor logs when the connection to etcd is lost and back. The watch
// itself resumes by the client's reconnection. A connection never made is
// not "lost": run logs that etcd is unreachable (a first start under the
// last-known-good file had no etcd connection to lose).
func (w *Watcher) monitor(ctx context.Context, cli *clientv3.Client) {
	conn := cli.ActiveConnection()
	connected, lost := false, false
	for {
		s := conn.GetState()
		switch {
		case s == connectivity.Ready:
			if lost {
				w.log.Info("etcd connection back")
			}
			connected, lost = true, false
		case s == connectivity.TransientFailure && connected && !lost:
			lost = true
			w.log.Warn("etcd connection lost; serving the current config and reconnecting")
		}
		if !conn.WaitForStateChange(ctx, s) {
			return
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
