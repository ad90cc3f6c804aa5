package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// RouteRedisLogs sends go-redis's own log lines (connection pool and
// reconnect messages, which it otherwise prints with the standard log
// package) to log as warnings, so that they come out as JSON lines with the
// rest; failed dials are left out (a Monitor reports an outage once). go-redis has one logger per process; only the first call takes
// effect, so that replicas run in one process (tests) do not swap it.
func RouteRedisLogs(log *slog.Logger) {
	routeOnce.Do(func() { redis.SetLogger(redisLogger{log}) })
}

var routeOnce sync.Once

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.Contains(msg, "connection pool: failed to dial") {
		// A Redis that does not answer is reported once per outage by
		// Monitor; go-redis would say so at every dial, every second.
		return
	}
	l.log.WarnContext(ctx, "redis client", "detail", msg)
}
