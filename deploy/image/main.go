// Command image builds detour's container image without a Docker daemon and
// without pulling a base image: one layer on top of nothing, holding the
// static detour binary, an /etc/passwd with the nonroot user (65532), the CA
// bundle of the build machine and the directories detour writes to. The image
// runs as 65532:65532 with entrypoint ["/detour", "serve"] and exposes 50051
// (gRPC), 9090 (metrics) and 50052 (admin).
//
//	CGO_ENABLED=0 go build -trimpath -tags nodemo -o /tmp/detour ./cmd/detour
//	go -C deploy run ./image -binary /tmp/detour -oci /tmp/detour-oci [-tar /tmp/detour.tar]
//
// The OCI layout directory can be pushed with `crane push --image-refs` /
// `skopeo copy oci:DIR docker://REF`; the tarball loads with `docker load` or
// `podman load`. Builds are reproducible: file times and the image's creation
// time come from SOURCE_DATE_EPOCH (default 0), so the same binary gives the
// same digest.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's contract with the chart (deploy/helm/detour) and the Dockerfile.
const (
	nonrootUID = 65532
	binaryPath = "detour"
	caPath     = "etc/ssl/certs/ca-certificates.crt"
	// lkgDir is where detour may write its last-known-good config; in
	// Kubernetes an emptyDir is mounted over it (read-only root filesystem).
	lkgDir = "var/lib/detour"
)

var (
	entrypoint   = []string{"/" + binaryPath, "serve"}
	exposedPorts = []string{"50051/tcp", "9090/tcp", "50052/tcp"}
)

// Options say what to build and where to write it.
type Options struct {
	// Binary is the path of a statically linked detour binary (required).
	Binary string
	// CACerts is the PEM bundle copied to /etc/ssl/certs/ca-certificates.crt.
	CACerts string
	// OCIDir, if set, receives an OCI image layout; it must not exist or be empty.
	OCIDir string
	// Tarball, if set, receives a `docker load` tarball tagged Tag.
	Tarball string
	// Tag names the image in the tarball and in the layout's
	// org.opencontainers.image.ref.name annotation.
	Tag string
	// Version goes to the org.opencontainers.image.version label.
	Version string
	// Created stamps the image and every file in it.
	Created time.Time
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(2)
	}
	img, err := Build(o)
	if err == nil {
		err = Write(img, o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	d, _ := img.Digest()
	fmt.Printf("built %s %s\n", o.Tag, d)
}

func parseFlags(args []string) (Options, error) {
	o := Options{}
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&o.Binary, "binary", "", "statically linked detour binary (CGO_ENABLED=0 go build -tags nodemo ./cmd/detour)")
	fs.StringVar(&o.CACerts, "ca", "/etc/ssl/certs/ca-certificates.crt", "CA bundle (PEM) to ship in the image")
	fs.StringVar(&o.OCIDir, "oci", "", "write an OCI image layout to this new directory")
	fs.StringVar(&o.Tarball, "tar", "", "write a `docker load` tarball to this file")
	fs.StringVar(&o.Tag, "tag", "ghcr.io/detour-dev/detour:dev", "image reference recorded in the tarball and the layout")
	fs.StringVar(&o.Version, "version", "dev", "value of the org.opencontainers.image.version label")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.Binary == "" || (o.OCIDir == "" && o.Tarball == "") || fs.NArg() > 0 {
		return o, errors.New("usage: image -binary FILE (-oci DIR | -tar FILE) [-tag REF] [-version V] [-ca FILE]")
	}
	created, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return o, err
	}
	o.Created = created
	return o, nil
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (https://reproducible-builds.org);
// empty means the Unix epoch.
func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// Build assembles the image in memory.
func Build(o Options) (v1.Image, error) {
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	arch, err := staticArch(o.Binary)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(o.CACerts)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	rootfs, err := rootFS(bin, ca, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(rootfs)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}

	ports := map[string]struct{}{}
	for _, p := range exposedPorts {
		ports[p] = struct{}{}
	}
	created := v1.Time{Time: o.Created}
	cfg := &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			User:         fmt.Sprintf("%d:%d", nonrootUID, nonrootUID),
			Entrypoint:   entrypoint,
			ExposedPorts: ports,
			WorkingDir:   "/",
			Env: []string{
				"PATH=/",
				"SSL_CERT_FILE=/" + caPath,
			},
			Labels: map[string]string{
				"org.opencontainers.image.title":       "detour",
				"org.opencontainers.image.description": "gRPC router in front of busy LLM APIs",
				"org.opencontainers.image.source":      "https://github.com/detour-dev/detour",
				"org.opencontainers.image.version":     o.Version,
			},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err = mutate.ConfigFile(base, cfg)
	if err != nil {
		return nil, err
	}
	return mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "deploy/image: detour binary, nonroot user, CA certificates",
			Comment:   "built without a base image",
		},
	})
}

// staticArch returns the GOARCH of a statically linked Linux ELF binary: the
// image has no libc and no dynamic loader, so anything else would not start.
func staticArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("binary %s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_S390:
		return "s390x", nil
	case elf.EM_PPC64:
		return "ppc64le", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("binary %s: unsupported machine %v", path, f.Machine)
}

// rootFS returns the layer as an uncompressed tar. Entries are in a fixed
// order with fixed times and owners, so the layer is reproducible.
func rootFS(bin, ca []byte, mtime time.Time) ([]byte, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonrootUID, nonrootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonrootUID)
	type entry struct {
		name string
		mode int64
		uid  int
		dir  bool
		body []byte
	}
	entries := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, body: []byte(group)},
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/passwd", mode: 0o644, body: []byte(passwd)},
		{name: "etc/ssl/", mode: 0o755, dir: true},
		{name: "etc/ssl/certs/", mode: 0o755, dir: true},
		{name: caPath, mode: 0o644, body: ca},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, uid: nonrootUID, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "var/", mode: 0o755, dir: true},
		{name: "var/lib/", mode: 0o755, dir: true},
		{name: lkgDir + "/", mode: 0o700, uid: nonrootUID, dir: true},
		{name: binaryPath, mode: 0o755, body: bin},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: mtime,
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write stores img as an OCI layout and/or a tarball, as o asks.
func Write(img v1.Image, o Options) error {
	if o.OCIDir != "" {
		if ents, err := os.ReadDir(o.OCIDir); err == nil && len(ents) > 0 {
			return fmt.Errorf("OCI layout %s: directory exists and is not empty", o.OCIDir)
		}
		p, err := layout.Write(o.OCIDir, empty.Index)
		if err != nil {
			return fmt.Errorf("OCI layout %s: %w", o.OCIDir, err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": o.Tag,
		})); err != nil {
			return fmt.Errorf("OCI layout %s: %w", o.OCIDir, err)
		}
	}
	if o.Tarball != "" {
		ref, err := name.ParseReference(o.Tag)
		if err != nil {
			return fmt.Errorf("tag: %w", err)
		}
		if err := tarball.WriteToFile(o.Tarball, ref, img); err != nil {
			return fmt.Errorf("tarball %s: %w", o.Tarball, err)
		}
	}
	return nil
}
