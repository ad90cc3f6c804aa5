package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"

	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

// drainResult is the outcome of drain and undrain, as -o json prints it.
type drainResult struct {
	Backend  string `json:"backend"`
	Drained  bool   `json:"drained"`
	Key      string `json:"key"`
	Revision int64  `json:"revision"`
}

func drain(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	return setDrained(ctx, g, args, stdout, stderr, true)
}

func undrain(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	return setDrained(ctx, g, args, stdout, stderr, false)
}

func setDrained(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer, drained bool) error {
	name := map[bool]string{true: "drain", false: "undrain"}[drained]
	fs := newFlags(name, g, stderr, name+" BACKEND [--force]")
	force := fs.Bool("force", false, "skip the checks against the document (backend exists; not the last usable one)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageError(stderr, name, "want exactly one BACKEND, got %q", pos)
	}
	backend := pos[0]
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	st, closeStore, err := g.store(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	if !*force {
		d, err := st.Get(ctx)
		if err != nil {
			return g.explainEtcd(err)
		}
		if err := checkDrain(d, st.Keys(), backend, drained); err != nil {
			return err
		}
	}
	rev, err := st.SetDrained(ctx, backend, drained, drainNote(name))
	if err != nil {
		return g.explainEtcd(err)
	}
	res := drainResult{Backend: backend, Drained: drained, Key: st.Keys().Drain(backend), Revision: rev}
	if g.json() {
		return writeJSON(stdout, res)
	}
	switch {
	case drained:
		fmt.Fprintf(stdout, "drained %s (%s, revision %d): every replica stops sending it new calls; calls in flight finish\n", backend, res.Key, rev)
	case rev == 0:
		fmt.Fprintf(stdout, "%s had no drain key (%s); nothing changed\n", backend, res.Key)
	default:
		fmt.Fprintf(stdout, "undrained %s (deleted %s, revision %d): every replica sends it calls again\n", backend, res.Key, rev)
	}
	return nil
}

// checkDrain refuses an unknown backend and a drain that every replica
// would reject (no usable primary left).
func checkDrain(d *etcd.Document, keys etcd.Keys, backend string, drained bool) error {
	if d.Doc == nil {
		return fmt.Errorf("no config document at %s; nothing to %s", keys.Config(), map[bool]string{true: "drain", false: "undrain"}[drained])
	}
	cfg, err := regions.Parse(d.Doc)
	if err != nil {
		return fmt.Errorf("the document at %s (revision %d) does not parse: %w", keys.Config(), d.ModRevision, err)
	}
	var names []string
	found, primary, usable := false, false, 0
	for _, r := range cfg.Regions {
		for _, b := range r.Backends {
			names = append(names, b.Name)
			if b.Name == backend {
				found, primary = true, true
				if b.Drained && !drained {
					return fmt.Errorf("%s has drained: true in the document at %s itself; edit the document to undrain it", backend, keys.Config())
				}
				continue
			}
			if !b.Drained && !slices.Contains(d.Drained, b.Name) {
				usable++
			}
		}
	}
	for _, b := range cfg.Fallbacks {
		names = append(names, b.Name)
		found = found || b.Name == backend
	}
	if !found {
		return fmt.Errorf("no backend %q in the document at %s (revision %d); backends: %s (--force writes the key anyway)",
			backend, keys.Config(), d.ModRevision, strings.Join(names, ", "))
	}
	if drained && primary && usable == 0 {
		return errors.New(backend + " is the last usable primary backend: the replicas would reject a document with none, so nothing was written")
	}
	return nil
}

// drainNote is the value of a drain key: who drained, from where, when.
func drainNote(verb string) string {
	who := "unknown"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%sed by %s@%s with detourctl at %s", verb, who, host, time.Now().UTC().Format(time.RFC3339))
}
