package report

import (
	"strings"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	got := Table([]string{"case", "p99 ms"}, [][]string{{"baseline", "1.250"}, {"burst", "12.5"}})
	want := "| case | p99 ms |\n|---|---|\n| baseline | 1.250 |\n| burst | 12.5 |\n"
	if got != want {
		t.Errorf("Table =\n%s\nwant\n%s", got, want)
	}
}

func TestFormats(t *testing.T) {
	tests := []struct{ got, want string }{
		{Ms(125 * time.Microsecond), "0.125"},
		{Ms(12500 * time.Microsecond), "12.5"},
		{Ms(1250 * time.Millisecond), "1250"},
		{MsSigned(-1500 * time.Microsecond), "−1.500"},
		{MsSigned(0), "+0.000"},
		{Percent(1), "100%"},
		{Percent(0.9995), "99.950%"},
		{Percent(0.99949), "99.949%"},
		{Percent(0.5), "50.00%"},
		{Percent(0), "0.00%"},
		{MiB(3 << 19), "1.5"},
		{Verdict(true), "pass"},
		{Verdict(false), "MISS"},
		{OnOff(false), "off"},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%d: got %q, want %q", i, tt.got, tt.want)
		}
	}
	if m := Machine(); !strings.Contains(m, "cores (GOMAXPROCS") {
		t.Errorf("Machine() = %q", m)
	}
}
