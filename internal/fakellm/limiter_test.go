package fakellm

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLimiter(t *testing.T) {
	ms := int64(time.Millisecond)
	tests := []struct {
		name  string
		qps   float64
		burst int
		at    []int64 // arrival times, ns
		want  []bool
	}{
		{
			name: "steady rate, burst 1",
			qps:  100, burst: 1, // one every 10 ms
			at:   []int64{0, 1 * ms, 9 * ms, 10 * ms, 15 * ms, 20 * ms, 100 * ms},
			want: []bool{true, false, false, true, false, true, true},
		},
		{
			name: "burst",
			qps:  100, burst: 3,
			at:   []int64{0, 0, 0, 0, 5 * ms, 10 * ms, 10 * ms},
			want: []bool{true, true, true, false, false, true, false},
		},
		{
			name: "default burst is a tenth of a second",
			qps:  50, // burst 5
			at:   []int64{0, 0, 0, 0, 0, 0},
			want: []bool{true, true, true, true, true, false},
		},
		{
			name: "default burst is at least 1",
			qps:  0.5,
			at:   []int64{0, 1000 * ms, 2000 * ms},
			want: []bool{true, false, true},
		},
		{
			name: "idle time does not bank more than the burst",
			qps:  100, burst: 2,
			at:   []int64{0, 1000 * ms, 1000 * ms, 1000 * ms},
			want: []bool{true, true, true, false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(tt.qps, tt.burst)
			var got []bool
			for _, at := range tt.at {
				got = append(got, l.allowAt(at))
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("admitted (-got +want):\n%s", diff)
			}
		})
	}
}

func TestSnapshotKeepsLimiter(t *testing.T) {
	a := newSnapshot(Settings{QPS: 10}, nil)
	b := newSnapshot(Settings{QPS: 10, BusyRate: 0.5}, a)
	c := newSnapshot(Settings{QPS: 20}, b)
	d := newSnapshot(Settings{}, c)
	if a.lim == nil || b.lim != a.lim {
		t.Error("a change of another knob replaced the limiter")
	}
	if c.lim == b.lim {
		t.Error("a change of QPS kept the limiter")
	}
	if d.lim != nil {
		t.Error("QPS 0 has a limiter")
	}
}

func TestAppendJSONString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`q"b\`, `"q\"b\\"`},
		{"a\nb\tc\r\x01", `"a\nb\tc\r\u0001"`},
		{"héllo 世界", `"héllo 世界"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(string(appendJSONString(nil, tt.in)), tt.want); diff != "" {
			t.Errorf("appendJSONString(%q) (-got +want):\n%s", tt.in, diff)
		}
	}
}
