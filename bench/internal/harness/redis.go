package harness

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a private redis-server child on a loopback port, with a client
// for bench's own reads (INFO).
type Redis struct {
	*Child
	Addr string
	RDB  *redis.Client
}

// StartRedis starts `redis-server --port P --bind 127.0.0.1 --save ”
// --appendonly no` as a child process, on a free loopback port.
func StartRedis() (*Redis, error) {
	addr, err := FreePort()
	if err != nil {
		return nil, err
	}
	return StartRedisOn(addr)
}

// StartRedisOn is StartRedis on addr (127.0.0.1:port), e.g. to start Redis
// again where a killed one listened.
func StartRedisOn(addr string) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (Debian: apt-get install redis-server; CI: .ci/services/redis.sh): %w", err)
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	dir, err := WorkDir()
	if err != nil {
		return nil, err
	}
	c, err := StartChild("redis", bin, []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir},
		func(line string) bool { return strings.Contains(line, "Ready to accept connections") }, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &Redis{Child: c, Addr: addr, RDB: redis.NewClient(&redis.Options{Addr: addr})}, nil
}

// Stop closes the client and stops the server.
func (r *Redis) Stop() {
	r.RDB.Close()
	r.Child.Stop()
}

// Version is redis_version from INFO server.
func (r *Redis) Version(ctx context.Context) string {
	s, err := r.RDB.Info(ctx, "server").Result()
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v
		}
	}
	return "?"
}

// CommandStats reads calls per command from INFO commandstats, leaving out
// INFO itself (bench's own reads).
func (r *Redis) CommandStats(ctx context.Context) (map[string]int64, error) {
	s, err := r.RDB.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	return parseCommandStats(s), nil
}

func parseCommandStats(info string) map[string]int64 {
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok || name == "info" {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[name] = n
			}
		}
	}
	return out
}
