package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/detour-dev/detour/internal/devetcd"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startEtcd(t *testing.T) *devetcd.Server {
	t.Helper()
	return devetcd.StartTest(t)
}

// ctl runs detourctl in process and returns its output and error.
func ctl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = run(ctx, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// doc is a valid document with one region holding the given backends.
func doc(backends ...string) string {
	var b strings.Builder
	b.WriteString("regions:\n  - name: r\n    backends:\n")
	for _, n := range backends {
		fmt.Fprintf(&b, "      - name: %s\n        endpoint: http://127.0.0.1:1/v1\n", n)
	}
	return b.String()
}

const badDoc = `regions:
  - name: r
    backends:
      - name: a
        endpoint: ftp://h
        weight: 5000
retry:
  max_attempts: 11
`

func TestConfigValidate(t *testing.T) {
	good := writeFile(t, "good.yaml", doc("a", "b"))
	bad := writeFile(t, "bad.yaml", badDoc)
	typo := writeFile(t, "typo.yaml", doc("a")+"retry:\n  max_attempt: 3\n  backof_base: 25ms\n  budget_ratio: 2\n")
	secret := writeFile(t, "secret.yaml", doc("a")+"fallbacks:\n  - name: fb\n    endpoint: http://h/v1\n    api_key_env: DETOUR_KEY_DETOURCTL_TEST_UNSET\n")
	tests := []struct {
		name    string
		args    []string
		wantErr error
		want    []string // lines of stdout that must appear
	}{
		{name: "valid", args: []string{"config", "validate", "-f", good}, want: []string{good + ": valid: 1 region, 2 backends, 0 fallbacks"}},
		{name: "invalid lists every reason", args: []string{"config", "validate", "-f", bad}, wantErr: errReported, want: []string{
			bad + ": invalid, 3 problems:",
			`  - regions[0].backends[0] (a): endpoint "ftp://h" must be an http:// or https:// URL`,
			"  - regions[0].backends[0] (a): weight 5000 must be in 0..1000",
			"  - retry.max_attempts: 11 must be in 0..10",
		}},
		{name: "decode errors counted and named by path, semantic ones too", args: []string{"config", "validate", "-f", typo}, wantErr: errReported, want: []string{
			typo + ": invalid, 3 problems:",
			"  - retry.max_attempt: unknown field, did you mean max_attempts? (line 7)",
			"  - retry.backof_base: unknown field, did you mean backoff_base? (line 8)",
			"  - retry.budget_ratio: 2 must be in 0..1",
		}},
		{name: "secret not here", args: []string{"config", "validate", "-f", secret}, wantErr: errReported, want: []string{
			"  - fallbacks[0] (fb): api_key_env DETOUR_KEY_DETOURCTL_TEST_UNSET is not set",
			"hint: API key references are checked on this machine; if only the replicas hold the keys, add --no-secret-check",
		}},
		{name: "secret not checked", args: []string{"config", "validate", "--no-secret-check", "-f", secret}, want: []string{secret + ": valid: 1 region, 1 backend, 1 fallback"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := ctl(t, tt.args...)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w+"\n") {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	out, _, err := ctl(t, "config", "validate", "-f", bad, "-o", "json")
	var v validation
	if jerr := json.Unmarshal([]byte(out), &v); jerr != nil || !errors.Is(err, errReported) {
		t.Fatalf("-o json: %v, %v:\n%s", err, jerr, out)
	}
	if v.Valid || len(v.Reasons) != 3 {
		t.Errorf("-o json = %+v, want invalid with 3 reasons", v)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := [][]string{
		nil,
		{"frobnicate"},
		{"config"},
		{"config", "list"},
		{"config", "validate"},
		{"config", "validate", "-f", "x", "extra"},
		{"config", "apply", "-f", "x", "--expect-revision", "-5"},
		{"drain"},
		{"drain", "a", "b"},
		{"status", "--nope"},
		{"-o", "yaml", "status"},
	}
	for _, args := range tests {
		_, stderr, err := ctl(t, args...)
		if !errors.Is(err, errUsage) || stderr == "" {
			t.Errorf("detourctl %q: err = %v, stderr %q; want a usage error explained on stderr", args, err, stderr)
		}
	}
}

func TestConfigApplyGetAndConflicts(t *testing.T) {
	e := startEtcd(t)
	ep := "--endpoints=" + e.Endpoints()[0]
	first := writeFile(t, "first.yaml", doc("a", "b"))
	out, _, err := ctl(t, "config", "apply", "-f", first, ep, "-o", "json")
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	var a applied
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.Revision == 0 || a.PreviousRevision != 0 || a.Key != "/detour/config" {
		t.Fatalf("apply -o json = %+v (%v), want a revision for a new key", a, err)
	}
	// The same document again changes nothing.
	out, _, err = ctl(t, ep, "config", "apply", "-f", first)
	if err != nil || !strings.Contains(out, "unchanged") {
		t.Errorf("re-apply: %v, %q; want unchanged", err, out)
	}
	// An invalid document is not written.
	bad := writeFile(t, "bad.yaml", badDoc)
	out, _, err = ctl(t, ep, "config", "apply", "-f", bad)
	if !errors.Is(err, errReported) || !strings.Contains(out, "weight 5000") {
		t.Errorf("apply invalid: %v, %q; want every reason and exit 1", err, out)
	}
	// get prints the document alone on stdout, its revision on stderr.
	out, stderr, err := ctl(t, ep, "config", "get")
	if err != nil || out != doc("a", "b") || !strings.Contains(stderr, fmt.Sprintf("mod revision %d", a.Revision)) {
		t.Errorf("get: %v, stdout %q, stderr %q", err, out, stderr)
	}
	// Two admins edit the same revision at once: one wins, the other is
	// refused with a conflict and nothing of its edit is written.
	edits := []string{writeFile(t, "x.yaml", doc("x")), writeFile(t, "y.yaml", doc("y"))}
	errs := make(chan error, len(edits))
	for _, f := range edits {
		go func() {
			_, _, err := ctl(t, ep, "config", "apply", "-f", f, "--expect-revision", fmt.Sprint(a.Revision))
			errs <- err
		}()
	}
	var won, conflicts int
	for range edits {
		err := <-errs
		switch {
		case err == nil:
			won++
		case errors.Is(err, etcd.ErrConflict) && strings.Contains(err.Error(), "conflict: /detour/config changed concurrently"):
			conflicts++
		default:
			t.Errorf("concurrent apply: %v", err)
		}
	}
	if won != 1 || conflicts != 1 {
		t.Errorf("concurrent applies: %d won, %d conflicts; want 1 and 1", won, conflicts)
	}
	out, _, err = ctl(t, ep, "config", "get", "-o", "json")
	var g got
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		t.Fatal(err)
	}
	if g.Document != doc("x") && g.Document != doc("y") {
		t.Errorf("document after the race = %q, want one edit whole", g.Document)
	}
	// An edit based on a stale revision is a conflict too.
	_, _, err = ctl(t, ep, "config", "apply", "-f", first, "--expect-revision", fmt.Sprint(a.Revision))
	if !errors.Is(err, etcd.ErrConflict) {
		t.Errorf("stale --expect-revision: err = %v, want a conflict", err)
	}
}

func TestDrainUndrain(t *testing.T) {
	e := startEtcd(t)
	ep := "--endpoints=" + e.Endpoints()[0]
	if _, _, err := ctl(t, ep, "config", "apply", "-f", writeFile(t, "c.yaml", doc("a", "b"))); err != nil {
		t.Fatal(err)
	}
	drained := func() []string {
		out, _, err := ctl(t, ep, "config", "get", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var g got
		if err := json.Unmarshal([]byte(out), &g); err != nil {
			t.Fatal(err)
		}
		return g.Drained
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
		drained []string
	}{
		{name: "unknown", args: []string{"drain", "zz"}, wantErr: `no backend "zz" in the document`, drained: []string{}},
		{name: "drain", args: []string{"drain", "a"}, drained: []string{"a"}},
		{name: "last usable", args: []string{"drain", "b"}, wantErr: "b is the last usable primary backend", drained: []string{"a"}},
		{name: "forced", args: []string{"drain", "zz", "--force"}, drained: []string{"a", "zz"}},
		{name: "undrain", args: []string{"undrain", "a"}, drained: []string{"zz"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ctl(t, append(tt.args, ep)...)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
			if diff := cmp.Diff(drained(), tt.drained); diff != "" {
				t.Errorf("drained (-got +want):\n%s", diff)
			}
		})
	}
	out, _, err := ctl(t, ep, "undrain", "b")
	if err != nil || !strings.Contains(out, "b had no drain key (/detour/drain/b); nothing changed") {
		t.Errorf("undrain without a key: %v, %q", err, out)
	}
	out, _, err = ctl(t, ep, "-o", "json", "drain", "b", "--force")
	var r drainResult
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r.Key != "/detour/drain/b" || !r.Drained || r.Revision == 0 {
		t.Errorf("drain -o json: %v, %q", err, out)
	}
}

// idle is a provider never called: status needs only the router's state.
type idle struct{}

func (idle) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return nil, errors.New("not called")
}

func (idle) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	return nil, errors.New("not called")
}

func TestStatus(t *testing.T) {
	cfg, err := regions.Load([]byte(doc("a", "b") + "fallbacks:\n  - name: fb\n    endpoint: http://127.0.0.1:1/v1\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Regions[0].Backends[1].Drained = true
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg, Revision: 9, Source: "etcd:/detour/config", AppliedAt: time.Now()},
		router.Options{NewProvider: func(regions.Backend) (router.Provider, error) { return idle{}, nil }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	gs := server.NewAdminServer(server.NewAdmin(rt, server.AdminOptions{Region: "r", Zone: "r-1", Logger: log}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	defer func() { gs.Stop(); <-done }()

	out, _, err := ctl(t, "status", "--addr", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"instance   region r, zone r-1",
		"config     etcd:/detour/config, revision 9, applied ",
		"shared     none (no --redis-addr): cache, cooldowns and limits are local to this instance\n",
		"budget     0 of 100 extra upstream calls",
		"BACKEND  REGION      ZONE  KIND    DRAINED  BREAKER  LIMIT  IN-FLIGHT  HELD  QUEUED  BUSY  FLOOR  CAPACITY",
		"a        r           -     openai  no       closed   256    0          0     0       0%    0%     slow-start",
		"b        r           -     openai  yes      closed   256    0          0     0       0%    0%     slow-start",
		"fb       (fallback)  -     openai  no       closed   256    0          0     0       0%    0%     slow-start",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	out, _, err = ctl(t, "status", "--addr", lis.Addr().String(), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var js struct {
		ConfigRevision string `json:"config_revision"`
		Backends       []struct {
			Name    string `json:"name"`
			Drained bool   `json:"drained"`
		} `json:"backends"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil || js.ConfigRevision != "9" || len(js.Backends) != 3 || !js.Backends[1].Drained {
		t.Errorf("status -o json = %+v (%v):\n%s", js, err, out)
	}
}

// TestSharedStateLine guards the status line on the Redis the replicas
// share.
func TestSharedStateLine(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	since := timestamppb.New(now.Add(-90 * time.Second))
	tests := []struct {
		name string
		s    *detourv1.SharedStateStatus
		want string
	}{
		{name: "no redis", want: "none (no --redis-addr): cache, cooldowns and limits are local to this instance"},
		{name: "not checked", s: &detourv1.SharedStateStatus{Addr: "redis:6379"}, want: "redis redis:6379: not checked yet"},
		{name: "up", s: &detourv1.SharedStateStatus{Addr: "redis:6379", Checked: true, Up: true, Since: since},
			want: "redis redis:6379: up since 2026-05-01T11:58:30Z (1m30s ago); 0 errors"},
		{name: "down", s: &detourv1.SharedStateStatus{Addr: "redis:6379", Checked: true, Since: since, Errors: 1,
			LastError: "dial tcp 10.0.0.9:6379: connect: connection refused"},
			want: "redis redis:6379: UNREACHABLE since 2026-05-01T11:58:30Z (1m30s ago): cache, cooldowns and limits are local to this instance; " +
				"1 error, last: dial tcp 10.0.0.9:6379: connect: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(sharedState(tt.s, now), tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}
