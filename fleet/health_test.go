package fleet

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/detour-dev/detour/fleet/fleettest"
	"github.com/detour-dev/detour/internal/testkit"
)

// count returns how many log lines contain s.
func count(buf *testkit.Buffer, s string) int {
	return strings.Count(buf.String(), s)
}

// TestMonitorSaysWhenRedisGoesAndComesBack: a Redis that dies is reported
// once, with a warning, however many checks fail after; its return is
// reported once too; Health follows, with the failed checks counted.
func TestMonitorSaysWhenRedisGoesAndComesBack(t *testing.T) {
	srv := fleettest.Start(t)
	store := openStore(t, srv.Addr, fleettest.Prefix(t))
	var logs testkit.Buffer
	m := newMonitor(store, 5*time.Millisecond, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	defer m.Close()

	eventually(t, "the first check", func() bool { return m.Health().Checked })
	if h := m.Health(); !h.Up || h.Addr != srv.Addr || h.Errors != 0 || h.Since.IsZero() {
		t.Fatalf("Health with Redis up = %+v", h)
	}
	if n := count(&logs, `level=INFO msg="shared state in redis" addr=`+srv.Addr); n != 1 {
		t.Errorf("%d start-up lines, want 1:\n%s", n, logs.String())
	}

	srv.Kill()
	eventually(t, "Redis reported down", func() bool { return !m.Health().Up })
	down := m.Health()
	// Several more checks fail; the warning is still the one.
	eventually(t, "three more failed checks", func() bool { return m.Health().Errors >= down.Errors+3 })
	if n := count(&logs, `level=WARN msg="redis unreachable: cache, cooldowns and limits are local to this replica until it answers"`); n != 1 {
		t.Errorf("%d warnings for one outage, want 1:\n%s", n, logs.String())
	}
	if h := m.Health(); h.LastError == "" || !h.Since.Equal(down.Since) {
		t.Errorf("Health while down = %+v, want the last error and the time it went down (%v)", h, down.Since)
	}

	srv.Restart()
	eventually(t, "Redis reported up again", func() bool { return m.Health().Up })
	if n := count(&logs, `level=WARN msg="redis reachable again: cache, cooldowns and limits are shared again"`); n != 1 {
		t.Errorf("%d lines for one recovery, want 1:\n%s", n, logs.String())
	}
}

// TestMonitorWarnsAtStartWhenNothingListens: a Redis address where nothing
// listens is a warning from the first check, never "shared state in redis".
func TestMonitorWarnsAtStartWhenNothingListens(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	store := openStore(t, addr, "x:")
	var logs testkit.Buffer
	m := newMonitor(store, 5*time.Millisecond, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	defer m.Close()
	eventually(t, "the first check", func() bool { return m.Health().Checked })
	if h := m.Health(); h.Up || h.Errors == 0 || !strings.Contains(h.LastError, "connection refused") {
		t.Errorf("Health = %+v, want down after a refused connection", h)
	}
	if strings.Contains(logs.String(), "shared state in redis") || count(&logs, "level=WARN msg=\"redis unreachable") != 1 {
		t.Errorf("log, want one warning and no start-up line:\n%s", logs.String())
	}
}

func TestMonitorWithoutRedis(t *testing.T) {
	m := NewMonitor(nil)
	defer m.Close()
	if h := m.Health(); h != (Health{}) {
		t.Errorf("Health without Redis = %+v, want zero", h)
	}
}
