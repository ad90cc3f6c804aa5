// Package report formats what bench measured as Markdown: tables, and the
// numbers in them the way BENCHMARKS.md and RELIABILITY.md print them
// (milliseconds with enough digits for sub-millisecond values, percentages
// that show 99.9% apart from 100%), and the line that says on what machine
// a run happened.
package report

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Table renders a Markdown table.
func Table(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for range header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	return b.String()
}

// Ms formats d in milliseconds with enough digits for sub-millisecond
// values: "0.125", "12.5", "1250".
func Ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return fmt.Sprintf("%.3f", v)
	case v < 1000:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// MsSigned is Ms with a sign: "+0.125", "−1.5".
func MsSigned(d time.Duration) string {
	if d < 0 {
		return "−" + Ms(-d)
	}
	return "+" + Ms(d)
}

// Percent formats a fraction: "100%" only when it is 1, three decimals from
// 99.9% up (so 99.95% is not rounded to 100), two below.
func Percent(f float64) string {
	switch {
	case f == 1:
		return "100%"
	case f >= 0.999:
		return fmt.Sprintf("%.3f%%", f*100)
	}
	return fmt.Sprintf("%.2f%%", f*100)
}

// MiB formats b bytes in MiB with one decimal.
func MiB(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// Verdict is "pass" or "MISS".
func Verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "MISS"
}

// OnOff is "on" or "off".
func OnOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// Machine describes where the run happens, for the record: the date, the
// cores and GOMAXPROCS, the Go version.
func Machine() string {
	return fmt.Sprintf("%s, %d cores (GOMAXPROCS %d), %s", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
}

// LoadAvg is the 1-minute load average when the process started, before
// it put any load on the machine (read at the end of a run, it would mostly
// measure the run itself).
func LoadAvg() string { return startLoad }

var startLoad = readLoadavg()

func readLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + " (1-min avg at start)"
}
