//go:build !nodemo

package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/detour-dev/detour/internal/devetcd"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
)

// startDemoEtcd starts an embedded etcd in a temp dir (on a free loopback
// port), writes cfg to it as the config document, and returns the Main
// settings that read it from there, with the last-known-good file in the
// same dir. Closing the server removes the dir.
func startDemoEtcd(ctx context.Context, cfg *regions.Config) (*devetcd.Server, LiveOptions, error) {
	srv, err := devetcd.Start("")
	if err != nil {
		return nil, LiveOptions{}, fmt.Errorf("demo etcd: %w", err)
	}
	live := LiveOptions{
		Etcd:          etcd.Config{Endpoints: srv.Endpoints()},
		LastKnownGood: filepath.Join(srv.Dir(), "lkg.yaml"),
	}
	var doc bytes.Buffer
	doc.WriteString("# detour demo: simulated backends on loopback\n")
	enc := yaml.NewEncoder(&doc)
	enc.SetIndent(2)
	err = enc.Encode(cfg)
	if err == nil {
		enc.Close()
		err = putDoc(ctx, live.Etcd, doc.Bytes())
	}
	if err != nil {
		srv.Close()
		return nil, LiveOptions{}, fmt.Errorf("demo etcd: %w", err)
	}
	return srv, live, nil
}

// putDoc writes doc as the config document, which must not exist yet.
func putDoc(ctx context.Context, ec etcd.Config, doc []byte) error {
	cli, err := ec.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = etcd.NewStore(cli, ec.Keys()).Put(ctx, doc, 0)
	return err
}
