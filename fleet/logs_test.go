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
