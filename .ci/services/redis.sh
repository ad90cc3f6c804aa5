# Sourced by .ci/run (set -euo pipefail, repo root, as root): installs
# Debian's redis-server when missing, starts it on a fixed loopback port with
# no persistence, waits until it answers, and exports DETOUR_TEST_REDIS_ADDR
# for the cache/ and fleet/ tests.
#
# The redis-server keeps running after the script (and .ci/run) ends, as a
# daemon, so that later runs reuse it. Stop it with
#   redis-cli -p 6390 shutdown nosave
# (it keeps nothing on disk); the script says so when it starts one.
redis_port=6390
redis_started=
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
redis_dir=$(mktemp -d)
if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
  redis-server --bind 127.0.0.1 --port "$redis_port" --protected-mode yes \
    --save '' --appendonly no --dir "$redis_dir" \
    --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
  redis_started=1
fi
redis_ok=
for _ in $(seq 1 100); do # up to ~10 s
  if redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
    redis_ok=1
    break
  fi
  sleep 0.1
done
if [ -z "$redis_ok" ]; then
  echo "redis-server did not answer PING on 127.0.0.1:$redis_port" >&2
  cat "$redis_dir/redis.log" >&2 || true
  return 1
fi
export DETOUR_TEST_REDIS_ADDR=127.0.0.1:$redis_port
echo "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on $DETOUR_TEST_REDIS_ADDR"
if [ -n "$redis_started" ]; then
  echo "  started here; it keeps running after this script: stop it with 'redis-cli -p $redis_port shutdown nosave' (log $redis_dir/redis.log)"
else
  echo "  already running (started earlier); stop it with 'redis-cli -p $redis_port shutdown nosave'"
fi
unset redis_port redis_dir redis_ok redis_started
