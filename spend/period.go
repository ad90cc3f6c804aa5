package spend

import (
	"time"

	"github.com/detour-dev/detour/regions"
)

// period returns the calendar period (UTC) of kind ("day" or "month") that
// holds t: its start, its end, and its name in Redis keys ("2026-05-14",
// "2026-05").
func period(kind string, t time.Time) (start, end time.Time, name string) {
	t = t.UTC()
	y, m, d := t.Date()
	if kind == regions.PeriodMonth {
		start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0), start.Format("2006-01")
	}
	start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 0, 1), start.Format("2006-01-02")
}
