package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-dev/detour/regions"
)

// TestServeRefusesSelfLoop: a kind: detour backend at the instance's own
// --listen address (here as localhost:PORT for a 127.0.0.1 listener) is a
// routing loop that no validation could see: detour serve refuses to start,
// naming the backend.
func TestServeRefusesSelfLoop(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{
		{Name: "myself", Kind: regions.KindDetour, Endpoint: "localhost:" + strconv.Itoa(port)},
		{Name: "real", Endpoint: "http://127.0.0.1:1/v1"},
	}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	served := make(chan net.Addr, 1)
	m := &Main{Listen: "127.0.0.1:" + strconv.Itoa(port), Region: "a", Grace: time.Second, config: cfg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ready: func(a net.Addr) { served <- a }}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case a := <-served:
		cancel()
		<-done
		t.Fatalf("detour serves on %v with a backend that is itself", a)
	case err := <-done:
		if !errors.Is(err, errSelfLoop) || !strings.Contains(err.Error(), "myself") {
			t.Fatalf("Run = %v, want a self-loop error naming backend myself", err)
		}
		t.Logf("Run: %v", err)
	}
}
