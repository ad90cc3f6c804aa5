# Sourced by .ci/run (set -euo pipefail, repo root, as root): installs
# Debian's PostgreSQL when missing, starts a server as the postgres user on
# 127.0.0.1 on a free port with a data dir in a temp dir (trust auth, no
# fsync: test data only), waits until it answers, and exports
# DETOUR_TEST_POSTGRES_URL for the jobs tests (jobs/, server/, cmd/detour),
# which fail rather than skip under CI without it.
#
# The server keeps running after the script (and .ci/run) ends, as a daemon,
# so that later runs reuse it (its URL is kept in $pg_state). Stop it with
#   su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | tail -1)/pg_ctl -D DATADIR stop"
# (the script prints the command when it starts one).
pg_state=/tmp/detour-ci-postgres.env
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
pg_url=
if [ -f "$pg_state" ]; then
  # shellcheck source=/dev/null
  . "$pg_state"
  if [ -n "${pg_port:-}" ] && "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    pg_url=postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable
    echo "postgres already running on 127.0.0.1:$pg_port (started earlier); stop it with: su postgres -c '$pg_bin/pg_ctl -D $pg_dir stop'"
  fi
fi
if [ -z "$pg_url" ]; then
  pg_port=
  for p in $(seq 5439 5499); do # the first free port
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      pg_port=$p
      break
    fi
  done
  if [ -z "$pg_port" ]; then
    echo "no free port for postgres in 5439-5499" >&2
    return 1
  fi
  pg_dir=$(mktemp -d -t detour-ci-postgres-XXXXXX)
  chown postgres: "$pg_dir"
  su postgres -s /bin/sh -c "'$pg_bin/initdb' -D '$pg_dir/data' -U postgres --auth=trust -E UTF8 >'$pg_dir/initdb.log' 2>&1"
  su postgres -s /bin/sh -c "'$pg_bin/pg_ctl' -D '$pg_dir/data' -l '$pg_dir/postgres.log' -w -t 30 \
    -o \"-p $pg_port -c listen_addresses=127.0.0.1 -k '$pg_dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300\" start" >/dev/null ||
    { cat "$pg_dir/postgres.log" >&2; return 1; }
  printf 'pg_port=%s\npg_dir=%s\n' "$pg_port" "$pg_dir/data" >"$pg_state"
  pg_url=postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable
  echo "postgres $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"
  echo "  started here; it keeps running after this script: stop it with su postgres -c '$pg_bin/pg_ctl -D $pg_dir/data stop' (log $pg_dir/postgres.log)"
fi
pg_ok=
for _ in $(seq 1 100); do # up to ~10 s
  if "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    pg_ok=1
    break
  fi
  sleep 0.1
done
if [ -z "$pg_ok" ]; then
  echo "postgres did not answer on 127.0.0.1:$pg_port" >&2
  return 1
fi
export DETOUR_TEST_POSTGRES_URL=$pg_url
unset pg_state pg_bin pg_url pg_port pg_dir pg_ok p
