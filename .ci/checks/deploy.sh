# Checks deploy/: the Helm chart (helm lint, helm template, the manifest
# tests that decode every rendered object into the Kubernetes API types), the
# Grafana dashboard, the Prometheus rules (via promtool.sh) and the container
# image (built offline into an OCI layout, then inspected).
#
# Run from the repository root: `bash .ci/checks/deploy.sh`, or sourced by
# .ci/run under `set -euo pipefail`. Everything runs in a subshell so that
# sourcing changes neither the caller's directory, options nor variables.
#
# helm is pinned in tools/go.mod and built from source (about 2 minutes on 2
# cores with a cold build cache, seconds after that). The ldflags are those of
# helm's own Makefile, so that `helm version` and the default Kubernetes
# version (from client-go v0.37: 1.37) match a released helm 3.22.0.
(
  set -euo pipefail
  cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  toolbin=$PWD/.ci/bin
  mkdir -p "$toolbin"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  chart=deploy/helm/detour
  say() { printf '\n-- deploy: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

  say "build helm (tools/go.mod)"
  k8s_minor=$(go -C tools list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
  helm_version=$(go -C tools list -m -f '{{.Version}}' helm.sh/helm/v3)
  go -C tools build -o "$toolbin/" -ldflags "\
-X helm.sh/helm/v3/internal/version.version=$helm_version \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    helm.sh/helm/v3/cmd/helm
  helm=$toolbin/helm
  "$helm" version --short

  say "chart copies of the rules and the dashboard"
  cmp deploy/prometheus/rules.yaml "$chart/files/rules.yaml" ||
    { echo "copy deploy/prometheus/rules.yaml to $chart/files/rules.yaml" >&2; exit 1; }
  cmp deploy/grafana/detour.json "$chart/files/detour.json" ||
    { echo "copy deploy/grafana/detour.json to $chart/files/detour.json" >&2; exit 1; }

  say "helm lint and helm template: default values and each ci/*-values.yaml"
  "$helm" lint --strict "$chart"
  "$helm" template detour "$chart" --namespace llm >"$work/default.yaml"
  for values in "$chart"/ci/*-values.yaml; do
    "$helm" lint --strict "$chart" -f "$values"
    "$helm" template detour "$chart" --namespace llm -f "$values" >"$work/$(basename "$values" -values.yaml).yaml"
  done
  grep -c '^kind:' "$work"/*.yaml

  say "promtool"
  bash .ci/checks/promtool.sh

  say "static detour binary (the production build: -tags nodemo leaves out demo and dev)"
  CGO_ENABLED=0 go build -trimpath -tags nodemo -o "$work/detour" ./cmd/detour

  say "container image (OCI layout and docker tarball, no daemon)"
  go -C deploy run ./image -binary "$work/detour" -oci "$work/oci" -tar "$work/detour.tar"

  say "deploy module: tidy, vet, tests"
  go -C deploy mod tidy -diff
  go -C deploy vet ./...
  DETOUR_HELM=$helm DETOUR_PROMTOOL=$(command -v promtool) DETOUR_BINARY=$work/detour \
    go -C deploy test -count=1 ./...
)
