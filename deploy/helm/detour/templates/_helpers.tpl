{{/* Chart name, truncated to a DNS label. */}}
{{- define "detour.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; room is left for a "-<zone>" suffix. */}}
{{- define "detour.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "detour.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "detour.labels" -}}
helm.sh/chart: {{ include "detour.chart" . }}
{{ include "detour.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: detour
{{- end }}

{{/* Labels that select every pod of the release, in every zone. */}}
{{- define "detour.selectorLabels" -}}
app.kubernetes.io/name: {{ include "detour.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "detour.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "detour.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "detour.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "detour.configMapName" -}}
{{- default (printf "%s-config" (include "detour.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{/*
The Deployments to render, as JSON: one without a zone (its pods learn their
zone from the downward API), or one per entry of .Values.zones, pinned to that
zone. Each item: name (object name), zone ("" or the zone), replicas (also the
autoscaler's minimum) and maxReplicas. In zone mode replicaCount and
autoscaling.maxReplicas are split evenly, rounded up, unless a zone sets its own.
*/}}
{{- define "detour.deployments" -}}
{{- $fullname := include "detour.fullname" . }}
{{- $out := list }}
{{- $n := len .Values.zones }}
{{- if eq $n 0 }}
{{- $out = append $out (dict "name" $fullname "zone" "" "replicas" (int .Values.replicaCount) "maxReplicas" (max (int .Values.autoscaling.maxReplicas) (int .Values.replicaCount))) }}
{{- else }}
{{- /* ceil(a/b) = (a+b-1)/b */}}
{{- $perZone := div (add (int .Values.replicaCount) (sub $n 1)) $n }}
{{- $maxPerZone := div (add (int .Values.autoscaling.maxReplicas) (sub $n 1)) $n }}
{{- range .Values.zones }}
{{- $r := int (default $perZone .replicas) }}
{{- $out = append $out (dict "name" (printf "%s-%s" $fullname .name) "zone" .name "replicas" $r "maxReplicas" (max (int (default $maxPerZone .maxReplicas)) $r)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* "true" when detour reads its config from etcd, else empty. */}}
{{- define "detour.etcdEnabled" -}}
{{- if or .Values.etcd.endpoints .Values.etcd.endpointsSecret.name }}true{{ end }}
{{- end }}

{{/* "true" when the listeners serve TLS (tls.secretName), else empty. */}}
{{- define "detour.tlsEnabled" -}}
{{- if .Values.tls.secretName }}true{{ end }}
{{- end }}

{{/* --auth: auth.mode, where a bare YAML `off` (read as false) means "off". */}}
{{- define "detour.authMode" -}}
{{- if eq (toString .Values.auth.mode) "false" }}off{{ else }}{{ .Values.auth.mode }}{{ end }}
{{- end }}

{{/* The port the kubelet probes: the plaintext health port with TLS on (its
native gRPC probe cannot do TLS), else the Router port. */}}
{{- define "detour.probePort" -}}
{{- if include "detour.tlsEnabled" . }}{{ .Values.ports.health }}{{ else }}{{ .Values.ports.grpc }}{{ end }}
{{- end }}

{{/* The oldest Kubernetes the chart works on: 1.30 (gRPC probes: 1.27; the
preStop sleep action: 1.30). It is checked whenever the target's version is
known: against a cluster (install, upgrade, template --validate or
--dry-run=server), and with `helm template --kube-version X`. Without a
cluster and without --kube-version, helm renders for its built-in default,
v1.20.0 in a helm built from source without release flags: that version with
no cluster behind it says nothing about the cluster, and is let through, so
that `helm template` and `helm lint` work with no flags. (A real 1.20 cluster
answers the kube-system lookup, and is refused.) */}}
{{- define "detour.checkKubeVersion" -}}
{{- $v := .Capabilities.KubeVersion.Version }}
{{- $helmDefault := and (eq $v "v1.20.0") (not (lookup "v1" "Namespace" "" "kube-system")) }}
{{- if and (not $helmDefault) (not (semverCompare ">=1.30.0-0" $v)) }}
{{- fail (printf "detour needs Kubernetes 1.30 or later (gRPC probes, the preStop sleep action); the target is %s (with helm template: the --kube-version given, else helm's default)" $v) }}
{{- end }}
{{- end }}

{{/* Combinations that detour serve would refuse, refused at render time. */}}
{{- define "detour.checkSecurity" -}}
{{- if and .Values.tls.clientCASecretName (not .Values.tls.secretName) }}
{{- fail "tls.clientCASecretName needs tls.secretName: mutual TLS is TLS with client certificates" }}
{{- end }}
{{- if and (eq (include "detour.authMode" .) "tls") (not .Values.tls.clientCASecretName) }}
{{- fail "auth.mode=tls needs tls.clientCASecretName: callers are identified by client certificates checked against it" }}
{{- end }}
{{- if include "detour.tlsEnabled" . }}
{{- $p := .Values.ports }}
{{- if has (int $p.health) (list (int $p.grpc) (int $p.metrics) (int $p.admin)) }}
{{- fail (printf "ports.health (%v) must differ from ports.grpc, ports.metrics and ports.admin" $p.health) }}
{{- end }}
{{- end }}
{{- end }}

{{/* appProtocol of the gRPC ports: cleartext HTTP/2, or TLS when detour
terminates it itself (so that a mesh passes it through). */}}
{{- define "detour.grpcAppProtocol" -}}
{{- if include "detour.tlsEnabled" . }}https{{ else }}kubernetes.io/h2c{{ end }}
{{- end }}
