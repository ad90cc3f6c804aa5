//go:build !nodemo

package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/detour-dev/detour/regions/etcd"
)

// TestDevEtcd runs `detour dev etcd` on a free loopback port: the endpoint
// it prints takes a config document, and it stops and removes its data dir
// when its context ends (Ctrl-C or SIGTERM).
func TestDevEtcd(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	var stderr bytes.Buffer
	d, err := parseDev([]string{"etcd", "--listen", addr}, &stderr)
	if err != nil {
		t.Fatalf("parseDev: %v\n%s", err, stderr.String())
	}
	ready := make(chan string, 1)
	d.ready = func(ep string) { ready <- ep }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, &out) }()
	var ep string
	select {
	case ep = <-ready:
	case err := <-done:
		t.Fatalf("Run returned before serving: %v", err)
	}
	if ep != addr {
		t.Errorf("endpoint %s, want %s", ep, addr)
	}
	for _, want := range []string{
		"  endpoint    " + addr + "\n",
		"  detourctl --endpoints " + addr + " config apply -f detour.yaml\n",
		"  detour serve --etcd-endpoints " + addr + " --lkg /tmp/detour-lkg.yaml\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, out.String())
		}
	}
	if err := putDoc(callCtx(t), etcd.Config{Endpoints: []string{ep}}, []byte("regions: []\n")); err != nil {
		t.Fatalf("put a document: %v", err)
	}
	dir := regexp.MustCompile(`data        (\S+) \(removed on exit\)`).FindStringSubmatch(out.String())
	if dir == nil {
		t.Fatalf("banner lacks the data dir:\n%s", out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v after its context ended, want nil", err)
	}
	if _, err := os.Stat(dir[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir %s still there after exit (%v)", dir[1], err)
	}
}

func TestDevUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"redis"}, {"etcd", "extra"}, {"etcd", "--listen", "nohostport"}} {
		var stderr bytes.Buffer
		if _, err := parseDev(args, &stderr); !errors.Is(err, errUsage) || stderr.Len() == 0 {
			t.Errorf("parseDev(%q) = %v with %q, want a usage error explained on stderr", args, err, stderr.String())
		}
	}
}
