#!/usr/bin/env bash
# govulncheck ./... for the whole module, with govulncheck and the tools that
# build an offline vulnerability database pinned in tools/vuln/go.mod.
#
# Built with the production build's tags (-tags nodemo, as the image and the
# Dockerfile build cmd/detour), so that what cmd/detour reaches is what the
# deployed binary reaches: not the embedded etcd server or the simulated
# backends that only `detour demo` and `detour dev` link. The packages that
# use those on purpose (internal/devetcd, internal/fakellm, bench) are still
# scanned as packages of ./...
#
# Which database:
#   - $DETOUR_VULN_DB when set (a URL, or file:///abs/path of a v1 database);
#   - else https://vuln.go.dev when it answers;
#   - else an offline database built from the golang.org/x/vulndb module
#     pinned in tools/vuln/go.mod (its data/osv, indexed by its cmd/indexdb).
#     That snapshot is only as new as the pin: the script says so, and fails
#     once the pin is older than $DETOUR_VULN_MAX_AGE_DAYS (default 60).
#     Bump it with:
#       go -C tools/vuln get -tool golang.org/x/vulndb/cmd/indexdb@latest
#
# Exits non-zero on any finding that the code reaches, and when no database
# can be had: it never passes without having scanned.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${DETOUR_VULN_BIN:-$root/.ci/bin}
mkdir -p "$bin"

say() { printf 'vuln: %s\n' "$*"; }
fail() { printf 'vuln: FAIL: %s\n' "$*" >&2; exit 1; }

go -C tools/vuln build -o "$bin/" \
  golang.org/x/vuln/cmd/govulncheck \
  golang.org/x/vulndb/cmd/indexdb
say "$("$bin/govulncheck" -version 2>/dev/null | grep -m1 -i 'scanner' || echo 'govulncheck (tools/vuln/go.mod)')"
say "toolchain: $(go version)"

db=${DETOUR_VULN_DB:-}
if [ -n "$db" ]; then
  say "database: $db (DETOUR_VULN_DB)"
elif command -v curl >/dev/null 2>&1 &&
  curl -fsS --max-time 10 -o /dev/null https://vuln.go.dev/index/db.json 2>/dev/null; then
  db=https://vuln.go.dev
  say "database: $db (online)"
else
  version=$(go -C tools/vuln list -m -f '{{.Version}}' golang.org/x/vulndb)
  dir=$(go -C tools/vuln list -m -f '{{.Dir}}' golang.org/x/vulndb)
  [ -d "$dir/data/osv" ] || fail "vuln.go.dev is unreachable and golang.org/x/vulndb@$version has no data/osv in the module cache"
  # The pseudo-version's timestamp is the date of the data.
  stamp=$(printf '%s' "$version" | sed -n 's/^v0\.0\.0-\([0-9]\{8\}\)[0-9]\{6\}-.*/\1/p')
  [ -n "$stamp" ] || fail "cannot date golang.org/x/vulndb@$version"
  age=$(( ($(date -u +%s) - $(date -u -d "$stamp" +%s)) / 86400 ))
  max=${DETOUR_VULN_MAX_AGE_DAYS:-60}
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  "$bin/indexdb" -vulns "$dir/data/osv" -out "$out/db"
  db=file://$out/db
  n=$(find "$out/db/ID" -name 'GO-*.json' | wc -l)
  say "WARNING: vuln.go.dev is unreachable from here; using the OFFLINE snapshot"
  say "  golang.org/x/vulndb@$version: $n reports, data of $stamp ($age days old, limit $max)"
  if [ "$age" -gt "$max" ]; then
    fail "the offline vulnerability database is $age days old (> $max): bump it (see the header of $0)"
  fi
fi

set +e
"$bin/govulncheck" -db "$db" -tags nodemo ./...
rc=$?
set -e
case $rc in
  0) say "clean" ;;
  3) fail "govulncheck found vulnerabilities that the code reaches (see above)" ;;
  *) fail "govulncheck did not complete (exit $rc)" ;;
esac
