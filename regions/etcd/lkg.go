package etcd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/detour-dev/detour/regions"
)

// The last-known-good file is the last document a replica applied, drain
// keys merged in, so that it can serve when it starts while etcd is down. It
// is an ordinary config document (`detour serve --config` and `detourctl
// config validate` read it) with a comment header:
//
//	# detour last-known-good config; written by detour, do not edit.
//	# source: etcd:/detour/config
//	# revision: 42
//	# applied_at: 2026-01-02T15:04:05Z
const lkgHeader = "# detour last-known-good config; written by detour, do not edit.\n"

// SourceLastKnownGood prefixes the Source of a snapshot read from a
// last-known-good file: "last-known-good:/var/lib/detour/lkg.yaml".
const SourceLastKnownGood = "last-known-good:"

// WriteLastKnownGood writes snap's config to path atomically: a reader (or a
// crash) sees the old file or the new one, never a part. It is written to a
// temp file in the same directory, synced, and renamed over path.
func WriteLastKnownGood(path string, snap *regions.Snapshot) error {
	var buf bytes.Buffer
	buf.WriteString(lkgHeader)
	fmt.Fprintf(&buf, "# source: %s\n# revision: %d\n# applied_at: %s\n", snap.Source, snap.Revision, snap.AppliedAt.UTC().Format(time.RFC3339Nano))
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(snap.Config); err != nil {
		return fmt.Errorf("last-known-good %s: %w", path, err)
	}
	enc.Close()
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("last-known-good: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this finds nothing
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("last-known-good: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("last-known-good: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("last-known-good: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("last-known-good: %w", err)
	}
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ReadLastKnownGood reads and validates the last-known-good file at path. The
// snapshot's Source is SourceLastKnownGood+path and its Revision the one the
// file was written at; AppliedAt is now.
func ReadLastKnownGood(path string) (*regions.Snapshot, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("last-known-good: %w", err)
	}
	cfg, err := regions.Load(doc)
	if err != nil {
		return nil, fmt.Errorf("last-known-good %s: %w", path, err)
	}
	snap := &regions.Snapshot{Config: cfg, Source: SourceLastKnownGood + path, AppliedAt: time.Now()}
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "#") {
			break
		}
		if v, ok := strings.CutPrefix(line, "# revision: "); ok {
			snap.Revision, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return snap, nil
}
