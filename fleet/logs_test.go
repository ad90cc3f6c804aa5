package fleet

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestRedisLoggerWritesSlog(t *testing.T) {
	var buf bytes.Buffer
	l := redisLogger{slog.New(slog.NewJSONHandler(&buf, nil))}
	l.Printf(context.Background(), "redis: %s failed: %v", "dial", "connection refused")
	got := buf.String()
	for _, want := range []string{`"level":"WARN"`, `"msg":"redis client"`, `"detail":"redis: dial failed: connection refused"`} {
		if !strings.Contains(got, want) {
			t.Errorf("log line %s lacks %s", got, want)
		}
	}
}

// TestRedisLoggerLeavesOutFailedDials: Monitor reports an outage once;
// go-redis's line for every failed dial is not repeated.
func TestRedisLoggerLeavesOutFailedDials(t *testing.T) {
	var buf bytes.Buffer
	l := redisLogger{slog.New(slog.NewJSONHandler(&buf, nil))}
	l.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v", 1, "dial tcp 127.0.0.1:1: connect: connection refused")
	if buf.Len() != 0 {
		t.Errorf("logged %s", buf.String())
	}
}
