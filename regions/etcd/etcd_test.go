package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/detour-dev/detour/internal/devetcd"
	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/regions"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startEtcd runs a real etcd member in the test process on loopback.
func startEtcd(t *testing.T) *devetcd.Server {
	t.Helper()
	return devetcd.StartTest(t)
}

func etcdClient(t *testing.T, srv *devetcd.Server) *clientv3.Client {
	t.Helper()
	cli, err := Config{Endpoints: srv.Endpoints()}.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// doc is a valid document with one region and the given backends.
func doc(backends ...string) string {
	var b strings.Builder
	b.WriteString("regions:\n  - name: r\n    backends:\n")
	for _, n := range backends {
		fmt.Fprintf(&b, "      - name: %s\n        endpoint: http://127.0.0.1:1/v1\n", n)
	}
	return b.String()
}

// recorder is the Apply callback of a test Watcher.
type recorder struct {
	mu    sync.Mutex
	snaps []*regions.Snapshot
	fail  error
}

func (r *recorder) apply(s *regions.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.snaps = append(r.snaps, s)
	return nil
}

func (r *recorder) last() *regions.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snaps) == 0 {
		return nil
	}
	return r.snaps[len(r.snaps)-1]
}

func backendNames(c *regions.Config) []string {
	var out []string
	for _, r := range c.Regions {
		for _, b := range r.Backends {
			s := b.Name
			if b.Drained {
				s += " (drained)"
			}
			out = append(out, s)
		}
	}
	return out
}

func waitReady(t *testing.T, w *Watcher) {
	t.Helper()
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready after 10s")
	}
}

func TestKeys(t *testing.T) {
	tests := []struct {
		prefix string
		want   []string
	}{
		{prefix: "", want: []string{"/detour/", "/detour/config", "/detour/drain/b"}},
		{prefix: "/detour", want: []string{"/detour/", "/detour/config", "/detour/drain/b"}},
		{prefix: "/prod/detour/", want: []string{"/prod/detour/", "/prod/detour/config", "/prod/detour/drain/b"}},
	}
	for _, tt := range tests {
		k := Keys{Prefix: tt.prefix}
		got := []string{k.Dir(), k.Config(), k.Drain("b")}
		if diff := cmp.Diff(got, tt.want); diff != "" {
			t.Errorf("Keys{%q} (-got +want):\n%s", tt.prefix, diff)
		}
	}
}

func TestStoreCompareAndSwap(t *testing.T) {
	srv := startEtcd(t)
	s := NewStore(etcdClient(t, srv), Keys{})
	ctx := testCtx(t)
	r1, err := s.Put(ctx, []byte(doc("a")), 0)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	// A second create is a conflict that names the key's revision.
	_, err = s.Put(ctx, []byte(doc("b")), 0)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: err = %v, want a *ConflictError", err)
	}
	if diff := cmp.Diff(*ce, ConflictError{Key: "/detour/config", Expected: 0, Actual: r1}); diff != "" {
		t.Errorf("conflict (-got +want):\n%s", diff)
	}
	// Concurrent edits based on the same revision: exactly one wins.
	const n = 4
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := s.Put(ctx, []byte(doc(fmt.Sprint("c", i))), r1)
			errs <- err
		}()
	}
	won, conflicts := 0, 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			won++
		case errors.Is(err, ErrConflict):
			conflicts++
		default:
			t.Errorf("concurrent put: %v", err)
		}
	}
	if won != 1 || conflicts != n-1 {
		t.Errorf("concurrent puts: %d won, %d conflicts; want 1 and %d", won, conflicts, n-1)
	}
	if _, err := s.SetDrained(ctx, "c0", true, "test"); err != nil {
		t.Fatal(err)
	}
	d, err := s.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.ModRevision <= r1 || !strings.Contains(string(d.Doc), "name: c") || !cmp.Equal(d.Drained, []string{"c0"}) {
		t.Errorf("Get = rev %d, drained %v, doc %q; want the winning edit and c0 drained", d.ModRevision, d.Drained, d.Doc)
	}
	if rev, err := s.SetDrained(ctx, "never-drained", false, ""); rev != 0 || err != nil {
		t.Errorf("undrain without a key = %d, %v; want 0 (nothing written)", rev, err)
	}
	if _, err := s.SetDrained(ctx, "a/b", true, ""); err == nil {
		t.Error("SetDrained accepted a name with a slash")
	}
}

func TestWatcherFollowsEtcd(t *testing.T) {
	srv := startEtcd(t)
	cli := etcdClient(t, srv)
	s := NewStore(cli, Keys{})
	ctx := testCtx(t)
	rev, err := s.Put(ctx, []byte(doc("a", "b")), 0)
	if err != nil {
		t.Fatal(err)
	}
	lkg := filepath.Join(t.TempDir(), "lkg.yaml")
	rec := &recorder{}
	w, err := NewWatcher(WatcherConfig{Client: cli, Apply: rec.apply, LastKnownGood: lkg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitReady(t, w)
	if got := rec.last(); got.Revision != rev || got.Source != "etcd:/detour/config" {
		t.Errorf("first snapshot: revision %d source %q, want %d etcd:/detour/config", got.Revision, got.Source, rev)
	}

	put := func(d string) int64 {
		t.Helper()
		cur, err := s.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Put(ctx, []byte(d), cur.ModRevision)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	steps := []struct {
		name        string
		do          func() int64
		wantApplied []string // nil: rejected
		wantReasons []string
	}{
		{name: "edit", do: func() int64 { return put(doc("a", "c")) }, wantApplied: []string{"a", "c"}},
		{name: "invalid", do: func() int64 { return put(doc("a", "a") + "retry:\n  max_attempts: 99\n") },
			wantReasons: []string{
				"regions[0].backends[1] (a): duplicate backend name, first used at regions[0].backends[0] (a)",
				"retry.max_attempts: 99 must be in 0..10",
			}},
		{name: "not yaml", do: func() int64 { return put("regions: [") },
			wantReasons: []string{"line 1: malformed YAML: did not find expected node content"}},
		{name: "fixed", do: func() int64 { return put(doc("a", "c", "d")) }, wantApplied: []string{"a", "c", "d"}},
		{name: "drain", do: func() int64 {
			r, err := s.SetDrained(ctx, "c", true, "")
			if err != nil {
				t.Fatal(err)
			}
			return r
		}, wantApplied: []string{"a", "c (drained)", "d"}},
		{name: "drain unknown backend", do: func() int64 {
			r, err := s.SetDrained(ctx, "zz", true, "")
			if err != nil {
				t.Fatal(err)
			}
			return r
		}, wantApplied: []string{"a", "c (drained)", "d"}},
		{name: "undrain", do: func() int64 {
			r, err := s.SetDrained(ctx, "c", false, "")
			if err != nil {
				t.Fatal(err)
			}
			return r
		}, wantApplied: []string{"a", "c", "d"}},
		{name: "deleted", do: func() int64 {
			resp, err := cli.Delete(ctx, "/detour/config")
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, wantReasons: []string{"no config document at /detour/config"}},
	}
	for _, st := range steps {
		before := rec.last()
		rev := st.do()
		err := w.WaitApplied(ctx, rev)
		if st.wantApplied != nil {
			if err != nil {
				t.Fatalf("%s: WaitApplied: %v", st.name, err)
			}
			got := rec.last()
			if got.Revision != rev {
				t.Errorf("%s: applied revision %d, want %d", st.name, got.Revision, rev)
			}
			if diff := cmp.Diff(backendNames(got.Config), st.wantApplied); diff != "" {
				t.Errorf("%s: applied backends (-got +want):\n%s", st.name, diff)
			}
			// The last-known-good file follows every applied document.
			lk, err := ReadLastKnownGood(lkg)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if diff := cmp.Diff(backendNames(lk.Config), st.wantApplied); diff != "" || lk.Revision != rev {
				t.Errorf("%s: last-known-good at revision %d (want %d), backends (-got +want):\n%s", st.name, lk.Revision, rev, diff)
			}
			continue
		}
		var re *RejectedError
		if !errors.As(err, &re) || !errors.Is(err, regions.ErrInvalid) {
			t.Fatalf("%s: WaitApplied = %v, want a *RejectedError", st.name, err)
		}
		if diff := cmp.Diff(re.Rejection.Reasons, st.wantReasons); diff != "" {
			t.Errorf("%s: reasons (-got +want):\n%s", st.name, diff)
		}
		if lr := w.LastRejection(); lr == nil || lr.Revision != rev {
			t.Errorf("%s: LastRejection = %+v, want revision %d", st.name, lr, rev)
		}
		if rec.last() != before {
			t.Errorf("%s: a rejected document was applied", st.name)
		}
	}
}

func TestWatcherRejectsWhatApplyRefuses(t *testing.T) {
	srv := startEtcd(t)
	cli := etcdClient(t, srv)
	s := NewStore(cli, Keys{Prefix: "/other"})
	ctx := testCtx(t)
	if _, err := s.Put(ctx, []byte(doc("a")), 0); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w, err := NewWatcher(WatcherConfig{Client: cli, Etcd: Config{Prefix: "/other"}, Apply: rec.apply, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitReady(t, w)
	rec.mu.Lock()
	rec.fail = errors.New("backend a: bad endpoint")
	rec.mu.Unlock()
	rev, err := s.Put(ctx, []byte(doc("b")), rec.last().Revision)
	if err != nil {
		t.Fatal(err)
	}
	err = w.WaitApplied(ctx, rev)
	var re *RejectedError
	if !errors.As(err, &re) || !cmp.Equal(re.Rejection.Reasons, []string{"apply: backend a: bad endpoint"}) {
		t.Errorf("WaitApplied = %v, want the Apply error as the reason", err)
	}
	// A drain that would leave no usable backend is refused before any write.
	err = w.SetDrained(ctx, "a", true, "")
	var ve *regions.ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("draining the only backend: err = %v, want a *ValidationError", err)
	}
	if d, _ := s.Get(ctx); len(d.Drained) != 0 {
		t.Errorf("drain keys %v written for a refused drain", d.Drained)
	}
}

func TestWatcherResyncsAfterCompaction(t *testing.T) {
	srv := startEtcd(t)
	cli := etcdClient(t, srv)
	s := NewStore(cli, Keys{})
	ctx := testCtx(t)
	r1, err := s.Put(ctx, []byte(doc("a")), 0)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Put(ctx, []byte(doc("b")), r1)
	if err != nil {
		t.Fatal(err)
	}
	r3, err := s.Put(ctx, []byte(doc("c")), r2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r3); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w := &Watcher{cfg: WatcherConfig{Apply: rec.apply}, keys: Keys{}, log: quiet(), timeout: 5 * time.Second, changed: make(chan struct{}), ready: make(chan struct{})}
	// Following from a revision older than the compaction ends the watch and
	// asks for a full read.
	_, compacted := w.follow(ctx, cli, &keyState{rev: r1, drained: map[string]bool{}})
	if !compacted || rec.last() != nil {
		t.Fatalf("follow from a compacted revision: compacted %v, applied %v; want a compaction and nothing applied", compacted, rec.last())
	}
	// The full read then sees the latest state.
	st, err := w.read(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if st.rev < r3 || !strings.Contains(string(st.doc), "name: c") {
		t.Errorf("read after compaction: rev %d doc %q, want rev >= %d with backend c", st.rev, st.doc, r3)
	}
}

func TestWatcherStartsFromLastKnownGoodWhenEtcdIsDown(t *testing.T) {
	srv := startEtcd(t)
	cli := etcdClient(t, srv)
	ctx := testCtx(t)
	s := NewStore(cli, Keys{})
	if _, err := s.Put(ctx, []byte(doc("from-etcd")), 0); err != nil {
		t.Fatal(err)
	}
	lkg := filepath.Join(t.TempDir(), "lkg.yaml")
	cfg, err := regions.Load([]byte(doc("from-file")))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLastKnownGood(lkg, &regions.Snapshot{Config: cfg, Revision: 7, Source: "etcd:/detour/config", AppliedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	rec := &recorder{}
	var logs testkit.Buffer
	w, err := NewWatcher(WatcherConfig{Etcd: Config{Endpoints: srv.Endpoints()}, Apply: rec.apply,
		LastKnownGood: lkg, ReadTimeout: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	waitReady(t, w)
	first := rec.last()
	if first.Source != "last-known-good:"+lkg || first.Revision != 7 || !cmp.Equal(backendNames(first.Config), []string{"from-file"}) {
		t.Errorf("while etcd is down: snapshot %s rev %d backends %v; want the last-known-good file at rev 7", first.Source, first.Revision, backendNames(first.Config))
	}
	// etcd comes back: its document replaces the file's.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec.last().Source != "etcd:/detour/config" {
		if time.Now().After(deadline) {
			t.Fatalf("etcd's document not applied 10s after etcd came back; serving %s", rec.last().Source)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
	if got := backendNames(rec.last().Config); !cmp.Equal(got, []string{"from-etcd"}) {
		t.Errorf("after etcd came back: backends %v, want [from-etcd]", got)
	}
	// No connection to etcd existed before: none was "lost" or "back".
	for _, never := range []string{"etcd connection lost", "etcd connection back"} {
		if strings.Contains(logs.String(), never) {
			t.Errorf("a start while etcd was down logged %q:\n%s", never, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "etcd unreachable; retrying") {
		t.Errorf("no word that etcd was unreachable:\n%s", logs.String())
	}
}

func TestLastKnownGoodRoundTrip(t *testing.T) {
	t.Setenv("DETOUR_KEY_TEST", "sk-test")
	cfg, err := regions.LoadFile("../testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "lkg.yaml")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for rev := range int64(3) { // overwrite in place
		if err := WriteLastKnownGood(p, &regions.Snapshot{Config: cfg, Revision: 40 + rev, Source: "etcd:/detour/config", AppliedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadLastKnownGood(p)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got.Config, cfg); diff != "" {
		t.Errorf("config after a round trip (-got +want):\n%s", diff)
	}
	if got.Revision != 42 || got.Source != "last-known-good:"+p {
		t.Errorf("revision %d source %q, want 42 and last-known-good:%s", got.Revision, got.Source, p)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only the file (no temp files left)", len(entries))
	}
	if _, err := ReadLastKnownGood(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("reading a missing file succeeded")
	}
}
