package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// DetourOptions says how to run one `detour serve` child.
type DetourOptions struct {
	// Bin is the detour binary. Empty means this repository's production
	// build (Binaries).
	Bin string
	// Config is the config document, written to a file for --config.
	Config string
	// Etcd, instead of Config, is the etcd endpoint to follow the document
	// at (--etcd-endpoints), with LKG as the last-known-good file (--lkg).
	Etcd, LKG string
	// Region is --region.
	Region string
	// Metrics serves /metrics on a free loopback port (--metrics).
	Metrics bool
	// Args are more serve flags; Env is added to the environment.
	Args, Env []string
}

// Detour is a `detour serve` child process.
type Detour struct {
	*Child
	// Addr is the Router listener (which also serves Admin); Metrics is the
	// /metrics listener's host:port, "" without DetourOptions.Metrics.
	Addr, Metrics string

	adminOnce sync.Once
	admin     detourv1.AdminClient
	adminConn *grpc.ClientConn
	adminErr  error
}

// StartDetour runs `detour serve` on a free loopback port as o says and
// waits until it serves.
func StartDetour(o DetourOptions) (*Detour, error) {
	own, _, err := Binaries()
	if err != nil {
		return nil, err
	}
	bin := o.Bin
	if bin == "" {
		bin = own
	}
	args := []string{"serve"}
	if o.Etcd != "" {
		args = append(args, "--etcd-endpoints", o.Etcd, "--lkg", o.LKG)
	} else {
		dir, err := WorkDir()
		if err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(dir, "detour-*.yaml")
		if err != nil {
			return nil, err
		}
		if _, err := f.WriteString(o.Config); err != nil {
			f.Close()
			return nil, err
		}
		f.Close()
		args = append(args, "--config", f.Name())
	}
	args = append(args, "--listen", "127.0.0.1:0", "--region", o.Region)
	d := &Detour{}
	if o.Metrics {
		addr, err := FreePort()
		if err != nil {
			return nil, err
		}
		d.Metrics = addr
		args = append(args, "--metrics", addr)
	}
	args = append(args, o.Args...)
	// serve's first log line once it listens names the address.
	ready := func(line string) bool {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "detour serving" && l.Addr != "" {
			d.Addr = l.Addr
			return true
		}
		return false
	}
	c, err := StartChild("detour", bin, args, ready, 20*time.Second, o.Env...)
	if err != nil {
		return nil, err
	}
	d.Child = c
	return d, nil
}

// Stop stops the process and closes the Admin connection.
func (d *Detour) Stop() {
	d.Child.Stop()
	if d.adminConn != nil {
		d.adminConn.Close()
	}
}

// Status calls detour.v1.Admin/Status: the applied config's revision and
// source, each backend's breaker and limit, the shared Redis's health.
func (d *Detour) Status(ctx context.Context) (*detourv1.StatusResponse, error) {
	d.adminOnce.Do(func() {
		d.adminConn, d.adminErr = grpc.NewClient(d.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if d.adminErr == nil {
			d.admin = detourv1.NewAdminClient(d.adminConn)
		}
	})
	if d.adminErr != nil {
		return nil, d.adminErr
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return d.admin.Status(ctx, &detourv1.StatusRequest{})
}

// WaitStatus polls Status every poll until ok accepts an answer, and
// returns it with the time it arrived; it gives up at deadline or when ctx
// ends (the last error, or one saying what was not seen).
func (d *Detour) WaitStatus(ctx context.Context, poll time.Duration, deadline time.Time, ok func(*detourv1.StatusResponse) bool) (*detourv1.StatusResponse, time.Time, error) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var last error
	for {
		st, err := d.Status(ctx)
		now := time.Now()
		if err == nil && ok(st) {
			return st, now, nil
		}
		if err != nil {
			last = err
		}
		if now.After(deadline) {
			if last == nil {
				last = errors.New("the awaited state never showed")
			}
			return nil, now, fmt.Errorf("Admin.Status: %w", last)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, time.Now(), ctx.Err()
		}
	}
}

// scrape reads /metrics and calls f with each sample line.
func (d *Detour) scrape(ctx context.Context, f func(line string)) error {
	if d.Metrics == "" {
		return errors.New("detour has no --metrics")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.Metrics+"/metrics", nil)
	resp, err := ctlClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return eachSample(resp.Body, f)
}

func eachSample(r io.Reader, f func(line string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			f(line)
		}
	}
	return sc.Err()
}

// MetricsSample reads go_goroutines and go_memstats_heap_inuse_bytes from
// detour's /metrics.
func (d *Detour) MetricsSample(ctx context.Context) (goroutines, heap float64, err error) {
	goroutines, heap = -1, -1
	err = d.scrape(ctx, func(line string) {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			goroutines, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			heap, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	})
	if err != nil {
		return 0, 0, err
	}
	if goroutines < 0 || heap < 0 {
		return 0, 0, errors.New("/metrics lacks go_goroutines or go_memstats_heap_inuse_bytes")
	}
	return goroutines, heap, nil
}

// MetricSum sums the series of metric name in detour's /metrics whose
// labels contain label (e.g. `method="Complete"`; "" for every series).
func (d *Detour) MetricSum(ctx context.Context, name, label string) (float64, error) {
	var sum float64
	err := d.scrape(ctx, func(line string) { sum += sampleValue(line, name, label) })
	return sum, err
}

// sampleValue is the value of a sample line of metric name whose labels
// contain label, or 0 for any other line.
func sampleValue(line, name, label string) float64 {
	rest, ok := strings.CutPrefix(line, name)
	if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') || !strings.Contains(rest, label) {
		return 0
	}
	i := strings.LastIndexByte(rest, ' ')
	if i < 0 {
		return 0
	}
	v, err := strconv.ParseFloat(rest[i+1:], 64)
	if err != nil {
		return 0
	}
	return v
}
