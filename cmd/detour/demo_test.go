//go:build !nodemo

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions/etcd"
)

// The demo's tests: `detour demo` is not in the production build
// (-tags nodemo).

// startDemo runs the demo in process on a free port until the test ends and
// returns its router address and banner.
func startDemo(t *testing.T, busyRate float64) (net.Addr, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	d := &Demo{Listen: "127.0.0.1:0", BusyRate: busyRate, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ready: func(a net.Addr) { addrc <- a }}
	var banner bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, &banner) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("demo did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo Run: %v", err)
		}
	})
	return addr, banner.String()
}

func TestDemoAnswers(t *testing.T) {
	addr, bannerText := startDemo(t, 0.5)
	if !strings.Contains(bannerText, "grpcurl -plaintext") || !strings.Contains(bannerText, addr.String()) {
		t.Errorf("banner lacks a ready grpcurl line for %s:\n%s", addr, bannerText)
	}
	c := dial(t, addr.String())
	regionsSeen := map[string]int{}
	for i := range 20 {
		resp, err := c.Complete(callCtx(t), userReq(fmt.Sprint("demo ", i)))
		if err != nil {
			t.Fatalf("demo call %d: %v", i, err)
		}
		regionsSeen[resp.GetServedBy().GetRegion()]++
	}
	if regionsSeen["eu-west"] == 0 || regionsSeen["eu-west"] == 20 {
		t.Errorf("regions served: %v; want the half-busy eu-west to serve some calls and be routed around for others", regionsSeen)
	}
}

// TestDemoBannerMakesEuWestBusy follows the banner's curl lines: posting
// busy_rate 1 to each makes the whole eu-west region busy, so no call is
// served there any more.
func TestDemoBannerMakesEuWestBusy(t *testing.T) {
	addr, bannerText := startDemo(t, 0)
	urls := regexp.MustCompile(`curl -s -X POST -d '\{"busy_rate":1\}' (http://\S+/control)   # (eu-west-[ab])\n`).FindAllStringSubmatch(bannerText, -1)
	if len(urls) != 2 || urls[0][2] != "eu-west-a" || urls[1][2] != "eu-west-b" {
		t.Fatalf("banner lacks a curl line for each of eu-west-a and eu-west-b:\n%s", bannerText)
	}
	for _, u := range urls {
		resp, err := http.Post(u[1], "application/json", strings.NewReader(`{"busy_rate":1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s", u[1], resp.Status)
		}
	}
	c := dial(t, addr.String())
	for i := range 10 {
		resp, err := c.Complete(callCtx(t), userReq(fmt.Sprint("busy eu-west ", i)))
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if r := resp.GetServedBy().GetRegion(); r == "eu-west" {
			t.Fatalf("call %d served by eu-west, which the banner's curl lines made fully busy", i)
		}
	}
}

// TestDemoDrainThroughEtcd follows the demo's banner: draining eu-west's
// backends through the embedded etcd moves every call to other regions.
func TestDemoDrainThroughEtcd(t *testing.T) {
	addr, banner := startDemo(t, 0)
	m := regexp.MustCompile(`go run ./cmd/detourctl --endpoints (\S+) drain eu-west-a\n`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("banner lacks the detourctl drain line:\n%s", banner)
	}
	cli, err := etcd.Config{Endpoints: []string{m[1]}}.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s := etcd.NewStore(cli, etcd.Keys{})
	var rev int64
	for _, b := range []string{"eu-west-a", "eu-west-b"} {
		if rev, err = s.SetDrained(callCtx(t), b, true, "test"); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	in := &instance{router: detourv1.NewRouterClient(conn), admin: detourv1.NewAdminClient(conn)}
	in.waitRevision(t, rev)
	for i := range 10 {
		resp, err := in.router.Complete(callCtx(t), userReq(fmt.Sprint("drained ", i)))
		if err != nil {
			t.Fatal(err)
		}
		if r := resp.GetServedBy().GetRegion(); r == "eu-west" {
			t.Fatalf("call %d served by eu-west after it was drained", i)
		}
	}
}
