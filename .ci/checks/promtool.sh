# Checks and unit-tests the Prometheus rules (deploy/prometheus) with promtool.
#
# Run from the repository root: `bash .ci/checks/promtool.sh`, or sourced by
# .ci/run under `set -euo pipefail`. Everything runs in a subshell so that
# sourcing changes neither the caller's directory, options nor variables.
#
# promtool comes from Debian's `prometheus` package (2.42 on bookworm; rule
# unit tests have been stable since 2.x). Installing it must not leave a
# Prometheus server running: services are kept from starting during the
# install, and one that runs anyway is stopped and disabled.
(
  set -euo pipefail
  cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"

  if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool: installing Debian's prometheus package"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
      # invoke-rc.d asks this script whether it may start a service: 101 = no.
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    status=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || status=$?
    if [ -n "$made_policy" ]; then
      rm -f "$policy"
    fi
    [ "$status" -eq 0 ] || { echo "promtool: apt-get install prometheus failed ($status)" >&2; exit "$status"; }
    # Belt and braces: the package enables a service; it must not run here.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus 2>/dev/null; then
      systemctl disable --now prometheus
    elif [ -x /etc/init.d/prometheus ] && /etc/init.d/prometheus status >/dev/null 2>&1; then
      /etc/init.d/prometheus stop
    fi
  fi
  promtool --version 2>&1 | head -n 1

  promtool check rules deploy/prometheus/rules.yaml
  # The chart ships the same rules (PrometheusRule); they must not drift.
  cmp deploy/prometheus/rules.yaml deploy/helm/detour/files/rules.yaml ||
    { echo "deploy/helm/detour/files/rules.yaml differs from deploy/prometheus/rules.yaml: copy it" >&2; exit 1; }
  promtool test rules deploy/prometheus/rules_test.yaml
)
