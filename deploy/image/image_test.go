package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// detourBinary returns a static detour binary: $DETOUR_BINARY when set (CI
// builds it once), else one built from this repository into a temp dir.
func detourBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("DETOUR_BINARY"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "detour-image-test")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "detour")
		cmd := exec.Command("go", "build", "-trimpath", "-tags", "nodemo", "-o", builtPath, "./cmd/detour")
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New("go build -tags nodemo ./cmd/detour: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtPath != "" {
		os.RemoveAll(filepath.Dir(builtPath))
	}
	os.Exit(code)
}

func testOptions(t *testing.T) Options {
	t.Helper()
	dir := t.TempDir()
	return Options{
		Binary:  detourBinary(t),
		CACerts: writeFile(t, "ca.crt", "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"),
		OCIDir:  filepath.Join(dir, "oci"),
		Tarball: filepath.Join(dir, "detour.tar"),
		Tag:     "ghcr.io/detour-dev/detour:test",
		Version: "test",
		Created: time.Unix(1700000000, 0).UTC(),
	}
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestImage builds the image into an OCI layout, reads it back from disk and
// checks what Kubernetes and the chart rely on.
func TestImage(t *testing.T) {
	o := testOptions(t)
	img, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(img, o); err != nil {
		t.Fatal(err)
	}

	idx, err := layout.ImageIndexFromPath(o.OCIDir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("layout has %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s, want %s", desc.MediaType, types.OCIManifestSchema1)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != o.Tag {
		t.Errorf("ref.name annotation %q, want %q", got, o.Tag)
	}
	got, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}

	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(cf.Config.User, "65532:65532"); diff != "" {
		t.Errorf("user (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(cf.Config.Entrypoint, []string{"/detour", "serve"}); diff != "" {
		t.Errorf("entrypoint (-got +want):\n%s", diff)
	}
	if len(cf.Config.Cmd) != 0 {
		t.Errorf("cmd %q, want none (flags come from the pod spec)", cf.Config.Cmd)
	}
	wantPorts := map[string]struct{}{"50051/tcp": {}, "9090/tcp": {}, "50052/tcp": {}}
	if diff := cmp.Diff(cf.Config.ExposedPorts, wantPorts); diff != "" {
		t.Errorf("exposed ports (-got +want):\n%s", diff)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s, want linux/<arch>", cf.OS, cf.Architecture)
	}
	if !cf.Created.Time.Equal(o.Created) {
		t.Errorf("created %v, want %v", cf.Created.Time, o.Created)
	}

	layers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1 (no base image)", len(layers))
	}
	files := readLayer(t, layers[0])

	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		t.Fatal(err)
	}
	detour, ok := files["detour"]
	switch {
	case !ok:
		t.Fatal("/detour is not in the layer")
	case !bytes.Equal(detour.body, bin):
		t.Error("/detour in the layer differs from the binary")
	case detour.hdr.Mode&0o111 == 0:
		t.Errorf("/detour mode %o is not executable", detour.hdr.Mode)
	}
	if p := files["etc/passwd"]; !strings.Contains(string(p.body), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", p.body)
	}
	if ca := files["etc/ssl/certs/ca-certificates.crt"]; !strings.Contains(string(ca.body), "BEGIN CERTIFICATE") {
		t.Error("CA bundle missing from the layer")
	}
	if d, ok := files["var/lib/detour/"]; !ok || d.hdr.Uid != 65532 {
		t.Error("/var/lib/detour missing or not owned by 65532")
	}
	if d, ok := files["tmp/"]; !ok || d.hdr.Mode&0o1777 != 0o1777 {
		t.Error("/tmp missing or not 1777")
	}
	for name, f := range files {
		if !f.hdr.ModTime.Equal(o.Created) {
			t.Errorf("%s mtime %v, want %v (reproducible)", name, f.hdr.ModTime, o.Created)
		}
	}

	// The binary in the image runs: it is static and answers its help.
	exe := filepath.Join(t.TempDir(), "detour")
	if err := os.WriteFile(exe, detour.body, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(exe, "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "serve") {
		t.Errorf("detour help from the image: %v\n%s", err, out)
	}

	// The tarball holds the same image.
	tb, err := tarball.ImageFromPath(o.Tarball, nil)
	if err != nil {
		t.Fatal(err)
	}
	tcf, err := tb.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tcf.Config, cf.Config); diff != "" {
		t.Errorf("tarball config differs from the layout's (-got +want):\n%s", diff)
	}
}

// TestReproducible builds twice from the same inputs and gets one digest.
func TestReproducible(t *testing.T) {
	o := testOptions(t)
	a, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("digests differ: %s vs %s", da, db)
	}
}

func TestRejects(t *testing.T) {
	o := testOptions(t)
	tests := []struct {
		name    string
		mutate  func(*Options)
		wantErr string
	}{
		{"dynamic binary", func(o *Options) { o.Binary = "/bin/sh" }, "dynamically linked"},
		{"not a binary", func(o *Options) { o.Binary = o.CACerts }, "bad magic"},
		{"no CA bundle", func(o *Options) { o.CACerts = filepath.Join(t.TempDir(), "none") }, "CA bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := o
			tt.mutate(&o)
			_, err := Build(o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Build: %v, want error containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("layout dir not empty", func(t *testing.T) {
		o := o
		o.OCIDir = t.TempDir()
		writeFileIn(t, o.OCIDir, "precious")
		img, err := Build(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := Write(img, o); err == nil || !strings.Contains(err.Error(), "not empty") {
			t.Errorf("Write: %v, want a refusal", err)
		}
	})
}

func TestSourceDateEpoch(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"", time.Unix(0, 0).UTC(), false},
		{"1700000000", time.Unix(1700000000, 0).UTC(), false},
		{"yesterday", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := sourceDateEpoch(tt.in)
		if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
			t.Errorf("sourceDateEpoch(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func writeFileIn(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

type layerFile struct {
	hdr  *tar.Header
	body []byte
}

func readLayer(t *testing.T, l v1.Layer) map[string]layerFile {
	t.Helper()
	mt, err := l.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	if mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]layerFile{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = layerFile{hdr: h, body: body}
	}
	return files
}
