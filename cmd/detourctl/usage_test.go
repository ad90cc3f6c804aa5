package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// metered answers every call with the same usage.
type metered struct{}

func (metered) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	return &detourv1.CompleteResponse{Content: "ok", FinishReason: "stop", Usage: &detourv1.Usage{PromptTokens: 1000, CompletionTokens: 500,
		TotalTokens: 1500, PromptCacheHitTokens: ptr[int32](600), ReasoningTokens: ptr[int32](100)}}, nil
}

func (metered) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	return nil, errors.New("not called")
}

func (metered) Close() error { return nil }

func ptr[T any](v T) *T { return &v }

// TestUsage: detourctl usage prints an instance's report (this one has no
// Redis: its own), by tenant and model, with the budgets.
func TestUsage(t *testing.T) {
	cfg, err := regions.Load([]byte(`regions:
  - name: r
    backends:
      - name: a
        endpoint: http://127.0.0.1:1/v1
        models: [deepseek-chat]
tenants:
  - name: search
spend:
  prices:
    - {model: deepseek-chat, input: 0.27, cache_hit_input: 0.07, output: 1.10}
  tenants:
    - name: search
      budget: {period: month, amount: 10}
`))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{
		NewProvider: func(regions.Backend) (router.Provider, error) { return metered{}, nil }, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	zero := 0.0
	req := &detourv1.CompleteRequest{Model: "deepseek-chat", Temperature: &zero, Messages: []*detourv1.Message{{Role: "user", Content: "hi"}}}
	// The second and third calls are cache hits (without authentication
	// the cache is shared between tenants): savings.
	for _, tenant := range []string{"search", "search", "walk-in"} {
		if _, err := rt.Complete(auth.WithTenant(context.Background(), tenant), req); err != nil {
			t.Fatal(err)
		}
	}
	gs := server.NewAdminServer(server.NewAdmin(rt, server.AdminOptions{Logger: log}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	defer func() { gs.Stop(); <-done }()

	out, _, err := ctl(t, "usage", "--addr", lis.Addr().String(), "--since", "2h")
	if err != nil {
		t.Fatal(err)
	}
	// 400 input + 600 cache-hit prompt tokens and 500 output: 0.000108 +
	// 0.000042 + 0.00055 = 0.0007.
	want := []string{
		"TENANT          MODEL  CALLS  PROMPT  COMPLETION  CACHE-HIT  REASONING     SPEND  SAVED CALLS  SAVED TOKENS   SAVINGS",
		" other  deepseek-chat      0       0           0          0          0         0            1          1500  0.000700",
		"search  deepseek-chat      1    1000         500        600        100  0.000700            1          1500  0.000700",
		" total                     1    1000         500        600        100  0.000700            2          3000  0.001400",
		"BUDGET  PERIOD  USED          LIMIT   USED %  STARTS AFRESH",
		"search  month   0.000700 USD  10 USD  0.0%    " + nextMonth().Format(time.RFC3339),
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("usage lacks %q:\n%s", w, out)
		}
	}
	if !strings.Contains(out, "this instance only (no Redis, or Redis did not answer)") {
		t.Errorf("usage does not say it is one instance's:\n%s", out)
	}
	out, _, err = ctl(t, "usage", "--addr", lis.Addr().String(), "--tenant", "other")
	if err != nil || strings.Contains(out, "search  deepseek-chat") || !strings.Contains(out, "other  deepseek-chat") {
		t.Errorf("--tenant other: %v\n%s", err, out)
	}
	_, _, err = ctl(t, "usage", "--addr", lis.Addr().String(), "--tenant", "nobody")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), `tenant "nobody" is not listed`) {
		t.Errorf("--tenant nobody: %v, want exit 1 naming it", err)
	}
	if _, errOut, err := ctl(t, "usage", "--since", "soon"); exitCode(err) != 2 || !strings.Contains(errOut, `--since "soon"`) {
		t.Errorf("--since soon: %v %q, want exit 2", err, errOut)
	}
}

func nextMonth() time.Time {
	y, m, _ := time.Now().UTC().Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 5, 14, 12, 30, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "90m", want: now.Add(-90 * time.Minute)},
		{in: "7d", want: now.AddDate(0, 0, -7)},
		{in: "2026-05-01", want: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)},
		{in: "2026-05-01T10:00:00+02:00", want: time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)},
		{in: "-1h", wantErr: true},
		{in: "yesterday", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if diff := cmp.Diff(money(0.0007), "0.000700"); diff != "" {
		t.Error(diff)
	}
}
