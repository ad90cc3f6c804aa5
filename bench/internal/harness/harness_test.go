package harness

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseProc(t *testing.T) {
	// The command name holds a space and a ')': fields start after the last one.
	stat := []byte("4242 (detour (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 0 0\n")
	status := []byte("Name:\tdetour\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t12\n")
	got, err := parseProc(stat, status)
	if err != nil {
		t.Fatal(err)
	}
	want := ProcSample{CPU: 3 * time.Second, RSS: 20 << 20, HWM: 40 << 20, Threads: 12}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("sample (-got +want):\n%s", diff)
	}
	if _, err := parseProc([]byte("no paren"), nil); err == nil {
		t.Error("a stat line without ')' parsed")
	}
	if s, err := ReadProc(os.Getpid()); err != nil || s.RSS == 0 || s.Threads == 0 {
		t.Errorf("ReadProc(self) = %+v, %v", s, err)
	}
}

func TestSampleValue(t *testing.T) {
	page := `# HELP detour_calls_total Calls answered.
# TYPE detour_calls_total counter
detour_calls_total{code="OK",method="Complete",source="live"} 90
detour_calls_total{code="FailedPrecondition",method="Complete",source="none"} 4
detour_calls_total_other{code="OK"} 1000
go_goroutines 42
`
	sum := func(name, label string) float64 {
		var s float64
		if err := eachSample(strings.NewReader(page), func(line string) { s += sampleValue(line, name, label) }); err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name, label string
		want        float64
	}{
		{"detour_calls_total", `method="Complete"`, 94},
		{"detour_calls_total", `code="FailedPrecondition"`, 4},
		{"detour_calls_total", "", 94},
		{"go_goroutines", "", 42},
		{"detour_calls", "", 0},
	}
	for _, tt := range tests {
		if got := sum(tt.name, tt.label); got != tt.want {
			t.Errorf("sum of %s{%s} = %v, want %v", tt.name, tt.label, got, tt.want)
		}
	}
}

func TestParseCommandStats(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_get:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_evalsha:calls=3,usec=9\r\ncmdstat_info:calls=7,usec=1\r\n"
	if diff := cmp.Diff(parseCommandStats(info), map[string]int64{"get": 10, "evalsha": 3}); diff != "" {
		t.Errorf("commandstats (-got +want):\n%s", diff)
	}
}

func TestCountSockets(t *testing.T) {
	// Port 8081 is 1F91. Lines: ours to 8081 established; ours to 8081
	// in TIME_WAIT (06); another process's to 8081; ours to another port.
	table := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:9C41 0100007F:1F91 06 00000000:00000000 00:00000000 00000000     0        0 112 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C42 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C43 0100007F:1F92 01 00000000:00000000 00:00000000 00000000     0        0 113 1 0000000000000000 20 4 30 10 -1
`)
	ours := map[string]bool{"111": true, "112": true, "113": true}
	if got := countSockets(table, 8081, ours); got != 1 {
		t.Errorf("countSockets = %d, want 1", got)
	}
	if n, err := Sockets(os.Getpid(), 1); err != nil || n != 0 {
		t.Errorf("Sockets(self, port 1) = %d, %v; want 0", n, err)
	}
}
