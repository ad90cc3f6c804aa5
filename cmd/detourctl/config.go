package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

// validation is the outcome of validating a document, as -o json prints it.
type validation struct {
	File     string   `json:"file"`
	Valid    bool     `json:"valid"`
	Reasons  []string `json:"reasons,omitempty"`
	Regions  int      `json:"regions"`
	Backends int      `json:"backends"`
	Fallback int      `json:"fallbacks"`
}

// validate runs detour's validator over doc. Without secrets, references
// to API keys (api_key_env, api_key_file) are not required to resolve on
// this machine; the replicas still check them before they apply.
func validate(file string, doc []byte, secrets bool) validation {
	v := validation{File: file}
	// A document that does not decode comes with the rest of it, decoded:
	// its semantic problems are reported too.
	cfg, err := regions.Parse(doc)
	if cfg != nil {
		v.Regions, v.Fallback = len(cfg.Regions), len(cfg.Fallbacks)
		for _, r := range cfg.Regions {
			v.Backends += len(r.Backends)
		}
		if !secrets {
			cfg = withoutSecretRefs(cfg)
		}
		err = regions.JoinReasons(err, cfg.Validate())
	}
	var ve *regions.ValidationError
	switch {
	case err == nil:
		v.Valid = true
	case errors.As(err, &ve):
		v.Reasons = ve.Reasons
	default:
		v.Reasons = []string{err.Error()}
	}
	return v
}

// withoutSecretRefs drops api_key_env and api_key_file where only one is
// set, so Validate does not look them up here. A backend with both keeps
// them, so that mistake is still reported.
func withoutSecretRefs(cfg *regions.Config) *regions.Config {
	c := *cfg
	strip := func(bs []regions.Backend) []regions.Backend {
		bs = slices.Clone(bs)
		for i := range bs {
			if bs[i].APIKeyEnv == "" || bs[i].APIKeyFile == "" {
				bs[i].APIKeyEnv, bs[i].APIKeyFile = "", ""
			}
		}
		return bs
	}
	c.Regions = slices.Clone(cfg.Regions)
	for i := range c.Regions {
		c.Regions[i].Backends = strip(c.Regions[i].Backends)
	}
	c.Fallbacks = strip(cfg.Fallbacks)
	return &c
}

func isSecretReason(r string) bool {
	return strings.Contains(r, ": api_key_env ") && strings.HasSuffix(r, " is not set") || strings.Contains(r, ": api_key_file: ")
}

// report prints v; it returns errReported when the document is invalid.
func (v validation) report(g *globals, stdout io.Writer) error {
	if g.json() {
		if err := writeJSON(stdout, v); err != nil {
			return err
		}
	} else if v.Valid {
		fmt.Fprintf(stdout, "%s: valid: %d %s, %d %s, %d %s\n", v.File, v.Regions, plural(v.Regions, "region", "regions"),
			v.Backends, plural(v.Backends, "backend", "backends"), v.Fallback, plural(v.Fallback, "fallback", "fallbacks"))
	} else {
		fmt.Fprintf(stdout, "%s: invalid, %d %s:\n", v.File, len(v.Reasons), plural(len(v.Reasons), "problem", "problems"))
		onlySecrets := true
		for _, r := range v.Reasons {
			fmt.Fprintf(stdout, "  - %s\n", r)
			onlySecrets = onlySecrets && isSecretReason(r)
		}
		if onlySecrets {
			fmt.Fprintln(stdout, "hint: API key references are checked on this machine; if only the replicas hold the keys, add --no-secret-check")
		}
	}
	if !v.Valid {
		return errReported
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func readDoc(stderr io.Writer, name, file string) ([]byte, error) {
	if file == "" {
		return nil, usageError(stderr, name, "-f FILE is required")
	}
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(file)
}

func configValidate(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config validate", g, stderr, "config validate -f FILE [--no-secret-check]")
	file := fs.String("f", "", "the config document (YAML); - reads stdin")
	noSecrets := fs.Bool("no-secret-check", false, "do not require api_key_env variables and api_key_file files to exist on this machine")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(stderr, "config validate", "unexpected arguments %q", pos)
	}
	doc, err := readDoc(stderr, "config validate", *file)
	if err != nil {
		return err
	}
	return validate(*file, doc, !*noSecrets).report(g, stdout)
}

// applied is the outcome of config apply, as -o json prints it.
type applied struct {
	Key              string `json:"key"`
	Revision         int64  `json:"revision"`
	PreviousRevision int64  `json:"previous_revision"`
	Unchanged        bool   `json:"unchanged,omitempty"`
}

func configApply(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config apply", g, stderr, "config apply -f FILE [--expect-revision N] [--no-secret-check]")
	file := fs.String("f", "", "the config document (YAML); - reads stdin")
	noSecrets := fs.Bool("no-secret-check", false, "do not require api_key_env variables and api_key_file files to exist on this machine")
	expect := fs.Int64("expect-revision", -1, "apply only if the document's mod revision is still N (from 'config get'; 0: the key must not exist). Default: the revision read just before the write")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(stderr, "config apply", "unexpected arguments %q", pos)
	}
	if *expect < -1 {
		return usageError(stderr, "config apply", "--expect-revision must be >= 0")
	}
	doc, err := readDoc(stderr, "config apply", *file)
	if err != nil {
		return err
	}
	if v := validate(*file, doc, !*noSecrets); !v.Valid {
		fmt.Fprintln(stderr, "detourctl config apply: not applied: the document is invalid")
		return v.report(g, stdout)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	st, closeStore, err := g.store(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	cur, err := st.Get(ctx)
	if err != nil {
		return g.explainEtcd(err)
	}
	base := cur.ModRevision
	if *expect >= 0 {
		base = *expect
	}
	out := applied{Key: st.Keys().Config(), PreviousRevision: cur.ModRevision}
	if base == cur.ModRevision && cur.Doc != nil && bytes.Equal(cur.Doc, doc) {
		out.Revision, out.Unchanged = cur.ModRevision, true
	} else {
		rev, err := st.Put(ctx, doc, base)
		var ce *etcd.ConflictError
		if errors.As(err, &ce) {
			return fmt.Errorf("conflict: %w\nnothing was written; run 'detourctl config get' to see the current document, merge your edit, and apply again", err)
		}
		if err != nil {
			return g.explainEtcd(err)
		}
		out.Revision = rev
	}
	if g.json() {
		return writeJSON(stdout, out)
	}
	if out.Unchanged {
		fmt.Fprintf(stdout, "%s unchanged: %s already holds this document (mod revision %d)\n", *file, out.Key, out.Revision)
		return nil
	}
	fmt.Fprintf(stdout, "applied %s to %s at revision %d (was %d)\n", *file, out.Key, out.Revision, out.PreviousRevision)
	fmt.Fprintln(stdout, "every replica validates and applies it; 'detourctl status --addr HOST:PORT' shows an instance's revision")
	return nil
}

// got is the document in etcd, as config get -o json prints it.
type got struct {
	Key         string   `json:"key"`
	ModRevision int64    `json:"mod_revision"`
	Revision    int64    `json:"revision"`
	Drained     []string `json:"drained"`
	Document    string   `json:"document"`
}

func configGet(ctx context.Context, g *globals, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config get", g, stderr, "config get")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(stderr, "config get", "unexpected arguments %q", pos)
	}
	ctx, cancel := g.withTimeout(ctx)
	defer cancel()
	st, closeStore, err := g.store(ctx)
	if err != nil {
		return err
	}
	defer closeStore()
	d, err := st.Get(ctx)
	if err != nil {
		return g.explainEtcd(err)
	}
	if d.Doc == nil {
		return fmt.Errorf("no config document at %s (apply one with 'detourctl config apply -f FILE')", st.Keys().Config())
	}
	if g.json() {
		return writeJSON(stdout, got{Key: st.Keys().Config(), ModRevision: d.ModRevision, Revision: d.Revision,
			Drained: append([]string{}, d.Drained...), Document: string(d.Doc)})
	}
	drained := "none"
	if len(d.Drained) > 0 {
		drained = strings.Join(d.Drained, ", ")
	}
	// The document alone goes to stdout, so that it can be saved, edited and
	// applied with --expect-revision.
	fmt.Fprintf(stderr, "# %s at mod revision %d; drained: %s\n", st.Keys().Config(), d.ModRevision, drained)
	_, err = stdout.Write(d.Doc)
	return err
}
