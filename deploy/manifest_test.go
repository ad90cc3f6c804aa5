package deploy_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir         = "helm/detour"
	threeZoneValues  = "helm/detour/ci/three-zones-values.yaml"
	fileConfigValues = "helm/detour/ci/file-config-values.yaml"
	mtlsValues       = "helm/detour/ci/mtls-values.yaml"
	nonrootUID       = 65532
)

// helmBinary returns the helm to render the chart with: $DETOUR_HELM (CI
// builds it from tools/go.mod), else helm on PATH. Without one the manifest
// tests skip, except under CI, where they fail.
func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("DETOUR_HELM"); h != "" {
		return h
	}
	if h, err := exec.LookPath("helm"); err == nil {
		return h
	}
	msg := "no helm: set DETOUR_HELM (bash .ci/checks/deploy.sh builds it from tools/go.mod)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func helmTemplate(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helmBinary(t), append([]string{"template", "detour", chartDir, "--namespace", "llm"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// release is one rendering of the chart, every object decoded strictly.
type release struct {
	deployments []*appsv1.Deployment
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	pdbs        []*policyv1.PodDisruptionBudget
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	accounts    []*corev1.ServiceAccount
	netpols     []*networkingv1.NetworkPolicy
	// Prometheus Operator objects, as plain maps (no Go types vendored).
	monitors []map[string]any
	rules    []map[string]any
}

var reDocSep = regexp.MustCompile(`(?m)^---\s*$`)

// decode splits helm's output into documents and decodes each one into its
// Kubernetes API type, rejecting unknown and duplicate fields: a misspelt
// field in a template fails here instead of being dropped by the API server.
func decode(t *testing.T, rendered []byte) *release {
	t.Helper()
	r := &release{}
	names := map[string]bool{}
	for _, doc := range reDocSep.Split(string(rendered), -1) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document is not YAML: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			if strings.TrimSpace(stripComments(doc)) != "" {
				t.Fatalf("document without kind:\n%s", doc)
			}
			continue
		}
		id := meta.APIVersion + "/" + meta.Kind + "/" + meta.Metadata.Namespace + "/" + meta.Metadata.Name
		if names[id] {
			t.Errorf("%s rendered twice", id)
		}
		names[id] = true
		if meta.Metadata.Namespace == "" {
			t.Errorf("%s has no namespace", id)
		}
		strict := func(into any) {
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 Deployment":
			o := &appsv1.Deployment{}
			strict(o)
			r.deployments = append(r.deployments, o)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			o := &autoscalingv2.HorizontalPodAutoscaler{}
			strict(o)
			r.hpas = append(r.hpas, o)
		case "policy/v1 PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			strict(o)
			r.pdbs = append(r.pdbs, o)
		case "v1 Service":
			o := &corev1.Service{}
			strict(o)
			r.services = append(r.services, o)
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			strict(o)
			r.configMaps = append(r.configMaps, o)
		case "v1 Secret":
			o := &corev1.Secret{}
			strict(o)
			r.secrets = append(r.secrets, o)
		case "v1 ServiceAccount":
			o := &corev1.ServiceAccount{}
			strict(o)
			r.accounts = append(r.accounts, o)
		case "networking.k8s.io/v1 NetworkPolicy":
			o := &networkingv1.NetworkPolicy{}
			strict(o)
			r.netpols = append(r.netpols, o)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o := map[string]any{}
			strict(&o)
			r.monitors = append(r.monitors, o)
		case "monitoring.coreos.com/v1 PrometheusRule":
			o := map[string]any{}
			strict(&o)
			r.rules = append(r.rules, o)
		default:
			t.Errorf("%s: no test decodes this kind; add it to decode()", id)
		}
	}
	if len(r.deployments) == 0 {
		t.Fatal("no Deployment rendered")
	}
	return r
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func render(t *testing.T, args ...string) *release {
	t.Helper()
	out, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("DETOUR_RENDER_DIR"); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + ".yaml"
		if err := os.WriteFile(filepath.Join(dir, name), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return decode(t, out)
}

// TestChartDefault renders the chart with its default values: one
// Deployment of 3 replicas spread over zones and nodes, its autoscaler,
// disruption budget, Services, config and dashboard.
func TestChartDefault(t *testing.T) {
	r := render(t)
	if len(r.deployments) != 1 {
		t.Fatalf("%d Deployments, want 1", len(r.deployments))
	}
	d := r.deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	c := checkDeployment(t, d)
	// The zone comes from the downward API (the pod label Kubernetes copies
	// from the node), the region from values.
	zone := envVar(c, "DETOUR_ZONE")
	if zone == nil || zone.ValueFrom == nil || zone.ValueFrom.FieldRef == nil ||
		zone.ValueFrom.FieldRef.FieldPath != "metadata.labels['topology.kubernetes.io/zone']" {
		t.Errorf("DETOUR_ZONE = %+v, want the downward API on the pod's topology.kubernetes.io/zone label", zone)
	}
	if d.Spec.Template.Spec.Affinity != nil {
		t.Errorf("unexpected affinity %+v", d.Spec.Template.Spec.Affinity)
	}
	if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--etcd") || strings.HasPrefix(a, "--lkg") }) {
		t.Errorf("etcd flags without etcd endpoints: %q", c.Args)
	}
	if !slices.Contains(c.Args, "--config=/etc/detour/config/config.yaml") || !hasMount(c, "config", "/etc/detour/config") {
		t.Errorf("config file not mounted and passed: %q", c.Args)
	}
	// Plaintext and no authentication unless values say otherwise.
	if !slices.Contains(c.Args, "--auth=off") || slices.ContainsFunc(c.Args, func(a string) bool {
		return strings.HasPrefix(a, "--tls-") || strings.HasPrefix(a, "--health-listen")
	}) {
		t.Errorf("default args %q, want --auth=off and no TLS or health flags", c.Args)
	}
	checkConfig(t, r)
	checkSizing(t, r, c)

	checkHPAs(t, r)
	checkPDB(t, r, 3)
	checkServices(t, r)
	checkDashboardConfigMap(t, r, "llm")
	if len(r.netpols)+len(r.monitors)+len(r.rules) != 0 {
		t.Error("NetworkPolicy, ServiceMonitor and PrometheusRule are off by default")
	}
}

// TestChartThreeZones renders ci/three-zones-values.yaml: one Deployment per
// zone pinned there, etcd with TLS and credentials from Secrets, and every
// optional object.
func TestChartThreeZones(t *testing.T) {
	r := render(t, "-f", threeZoneValues)
	zones := []string{"eu-west-1a", "eu-west-1b", "eu-west-1c"}
	wantReplicas := map[string]int32{"eu-west-1a": 1, "eu-west-1b": 1, "eu-west-1c": 2}
	if len(r.deployments) != len(zones) {
		t.Fatalf("%d Deployments, want one per zone (%d)", len(r.deployments), len(zones))
	}
	var total int32
	for i, d := range r.deployments {
		zone := zones[i]
		if want := "detour-" + zone; d.Name != want {
			t.Errorf("Deployment %d is %s, want %s", i, d.Name, want)
		}
		c := checkDeployment(t, d)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != wantReplicas[zone] {
			t.Errorf("%s: replicas %v, want %d", d.Name, d.Spec.Replicas, wantReplicas[zone])
		} else {
			total += *d.Spec.Replicas
		}
		if e := envVar(c, "DETOUR_ZONE"); e == nil || e.Value != zone {
			t.Errorf("%s: DETOUR_ZONE = %+v, want %q", d.Name, e, zone)
		}
		if e := envVar(c, "DETOUR_REGION"); e == nil || e.Value != "eu-west" {
			t.Errorf("%s: DETOUR_REGION = %+v, want eu-west", d.Name, e)
		}
		// Pinned to its zone.
		want := &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zone},
			}}}},
		}}
		var got *corev1.NodeAffinity
		if a := d.Spec.Template.Spec.Affinity; a != nil {
			got = a.NodeAffinity
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("%s: node affinity (-got +want):\n%s", d.Name, diff)
		}
		if d.Spec.Selector.MatchLabels["detour.dev/zone"] != zone {
			t.Errorf("%s: selector %v does not select its zone only", d.Name, d.Spec.Selector.MatchLabels)
		}

		// etcd instead of --config: endpoints, TLS and credentials from Secrets.
		for _, a := range []string{
			"--etcd-prefix=/detour/eu-west", "--lkg=/var/lib/detour/lkg.yaml",
			"--etcd-cacert=/etc/detour/etcd-tls/ca.crt", "--etcd-cert=/etc/detour/etcd-tls/tls.crt", "--etcd-key=/etc/detour/etcd-tls/tls.key",
		} {
			if !slices.Contains(c.Args, a) {
				t.Errorf("%s: missing arg %s in %q", d.Name, a, c.Args)
			}
		}
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--config") }) || volume(d, "config") != nil {
			t.Errorf("%s: --config and etcd are alternatives: %q", d.Name, c.Args)
		}
		for env, secret := range map[string]string{
			"DETOUR_ETCD_ENDPOINTS": "detour-etcd", "DETOUR_ETCD_USER": "detour-etcd-auth",
			"DETOUR_ETCD_PASSWORD": "detour-etcd-auth", "DETOUR_KEY_DEEPSEEK": "detour-provider-keys",
		} {
			e := envVar(c, env)
			if e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != secret {
				t.Errorf("%s: %s = %+v, want it from Secret %s", d.Name, env, e, secret)
			}
		}
		if v := volume(d, "etcd-tls"); v == nil || v.Secret == nil || v.Secret.SecretName != "detour-etcd-client-tls" {
			t.Errorf("%s: etcd-tls volume %+v, want Secret detour-etcd-client-tls", d.Name, v)
		}
		if !hasMount(c, "etcd-tls", "/etc/detour/etcd-tls") {
			t.Errorf("%s: etcd TLS Secret not mounted at /etc/detour/etcd-tls", d.Name)
		}
		if !strings.HasSuffix(c.Image, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
			t.Errorf("%s: image %s not pinned by digest", d.Name, c.Image)
		}
	}
	if total != 4 {
		t.Errorf("%d replicas in total, want 4", total)
	}

	checkHPAs(t, r)
	checkPDB(t, r, total)
	checkServices(t, r)
	checkDashboardConfigMap(t, r, "monitoring")
	checkNetworkPolicy(t, r)
	checkMonitoring(t, r)
}

// TestChartFileConfig renders ci/file-config-values.yaml: a config document
// whose API keys come from env and from a mounted Secret, and no autoscaler:
// the Deployment owns its replica count.
func TestChartFileConfig(t *testing.T) {
	r := render(t, "-f", fileConfigValues)
	if len(r.hpas) != 0 {
		t.Errorf("%d HPAs with autoscaling off", len(r.hpas))
	}
	d := r.deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	checkDeployment(t, d)
	checkConfig(t, r)
	checkPDB(t, r, 3)
	if p := r.pdbs[0].Spec; p.MinAvailable == nil || p.MinAvailable.IntValue() != 2 || p.MaxUnavailable != nil {
		t.Errorf("PDB %+v, want minAvailable 2 only", p)
	}
	if v := volume(d, "openai"); v == nil || v.Secret == nil || v.Secret.SecretName != "openai-key" {
		t.Errorf("openai volume %+v, want Secret openai-key", v)
	}
}

// TestChartMTLS renders ci/mtls-values.yaml: mutual TLS and tokens on the
// Router and Admin listeners, with the certificate and the client CA from
// Secrets mounted whole (a rotation must reach the pod), and every probe on
// the plaintext health port.
func TestChartMTLS(t *testing.T) {
	r := render(t, "-f", mtlsValues)
	d := r.deployments[0]
	c := checkDeployment(t, d)
	for _, a := range []string{
		"--auth=any",
		"--tls-cert=/etc/detour/tls/tls.crt", "--tls-key=/etc/detour/tls/tls.key",
		"--tls-client-ca=/etc/detour/client-ca/ca.crt",
		"--tls-reload-interval=30s",
		"--health-listen=:50063",
	} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("missing arg %s in %q", a, c.Args)
		}
	}
	// Each file flag names a key of the right Secret, under its mount.
	for flag, want := range map[string]struct{ secret, key string }{
		"--tls-cert":      {"detour-tls", "tls.crt"},
		"--tls-key":       {"detour-tls", "tls.key"},
		"--tls-client-ca": {"detour-client-ca", "ca.crt"},
	} {
		file := argValue(c, flag)
		dir, key := filepath.Split(file)
		m := mountAt(c, strings.TrimSuffix(dir, "/"))
		if m == nil || key != want.key {
			t.Errorf("%s=%s: no volume mounted at %s, or key %q is not %s", flag, file, dir, key, want.key)
			continue
		}
		v := volume(d, m.Name)
		if v == nil || v.Secret == nil || v.Secret.SecretName != want.secret || len(v.Secret.Items) != 0 {
			t.Errorf("%s: volume %+v, want the whole Secret %s", flag, v, want.secret)
		}
		if m.SubPath != "" || m.SubPathExpr != "" || !m.ReadOnly {
			t.Errorf("%s: mount %+v, want the read-only directory (a subPath never sees a rotation)", flag, m)
		}
	}
	// The probes cannot do TLS: they use the plaintext health port, which
	// no Service exposes.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if p == nil || p.GRPC == nil || p.GRPC.Port != 50063 {
			t.Errorf("%s probe %+v, want gRPC on the health port 50063", name, p)
		}
	}
	for _, s := range r.services {
		for _, p := range s.Spec.Ports {
			if p.TargetPort.String() == "health" || p.Port == 50063 {
				t.Errorf("Service %s exposes the health port: %+v", s.Name, p)
			}
			if (p.Name == "grpc" || p.Name == "admin") && (p.AppProtocol == nil || *p.AppProtocol != "https") {
				t.Errorf("Service %s port %s: appProtocol %v, want https (detour terminates TLS)", s.Name, p.Name, p.AppProtocol)
			}
		}
	}
	checkServices(t, r)
}

// TestChartRejectsBadValues: values.schema.json stops mistakes before
// anything reaches the cluster.
func TestChartRejectsBadValues(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown key", []string{"--set", "replica=3"}, "additional properties 'replica' not allowed"},
		{"zero replicas", []string{"--set", "replicaCount=0"}, "replicaCount"},
		{"zone not a DNS label", []string{"--set", "zones[0].name=EU_1a"}, "zones/0/name"},
		{"root", []string{"--set", "securityContext.runAsNonRoot=false"}, "runAsNonRoot"},
		{"privilege escalation", []string{"--set", "securityContext.allowPrivilegeEscalation=true"}, "allowPrivilegeEscalation"},
		{"bad spread policy", []string{"--set", "topologySpread.zone.whenUnsatisfiable=Never"}, "whenUnsatisfiable"},
		{"key in values", []string{"--set", "providerKeys[0].env=DETOUR_KEY_DEEPSEEK", "--set", "providerKeys[0].value=sk-1"}, "additional properties 'value' not allowed"},
		{"unknown auth mode", []string{"--set", "auth.mode=mtls"}, "/auth/mode"},
		{"bad reload interval", []string{"--set", "tls.secretName=detour-tls", "--set", "tls.reloadInterval=10"}, "/tls/reloadInterval"},
		{"client CA without certificate", []string{"--set", "tls.clientCASecretName=detour-client-ca"}, "tls.clientCASecretName needs tls.secretName"},
		{"auth tls without client CA", []string{"--set", "auth.mode=tls", "--set", "tls.secretName=detour-tls"}, "auth.mode=tls needs tls.clientCASecretName"},
		{"health port taken", []string{"--set", "tls.secretName=detour-tls", "--set", "ports.health=50052"}, "ports.health (50052) must differ"},
		{"kubernetes before 1.30", []string{"--kube-version", "1.29.3"}, "detour needs Kubernetes 1.30 or later (gRPC probes, the preStop sleep action); the target is v1.29.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := helmTemplate(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("helm template %q: %v, want an error about %s", tt.args, err, tt.wantErr)
			}
		})
	}
}

// TestChartRendersWithoutKubeVersion: `helm template` and `helm lint` with
// no flags work whichever helm renders: one built from source (tools/go.mod,
// as the README builds it) renders for Kubernetes v1.20.0 by default, which
// the version check lets through when no cluster is behind it; a supported
// version given with --kube-version renders too.
func TestChartRendersWithoutKubeVersion(t *testing.T) {
	for _, v := range []string{"v1.20.0", "1.30.0", "1.37.1"} {
		if _, err := helmTemplate(t, "--kube-version", v); err != nil {
			t.Errorf("helm template --kube-version %s: %v", v, err)
		}
	}
}

// checkDeployment checks what every detour Deployment must have and returns
// its detour container.
func checkDeployment(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	spec := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels
	if !selects(d.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("%s: selector %v does not select its pods %v", d.Name, d.Spec.Selector.MatchLabels, podLabels)
	}
	if s := d.Spec.Strategy.RollingUpdate; s == nil || s.MaxUnavailable == nil || s.MaxUnavailable.IntValue() != 0 {
		t.Errorf("%s: rolling update may take pods down before new ones are ready: %+v", d.Name, s)
	}

	// Spread over zones (hard) and nodes, counting the release's pods.
	spread := map[string]corev1.TopologySpreadConstraint{}
	for _, c := range spec.TopologySpreadConstraints {
		spread[c.TopologyKey] = c
		if c.LabelSelector == nil || !selects(c.LabelSelector.MatchLabels, podLabels) {
			t.Errorf("%s: spread over %s does not count its own pods", d.Name, c.TopologyKey)
		}
		if c.MaxSkew != 1 {
			t.Errorf("%s: spread over %s: maxSkew %d, want 1", d.Name, c.TopologyKey, c.MaxSkew)
		}
	}
	if c, ok := spread["topology.kubernetes.io/zone"]; !ok || c.WhenUnsatisfiable != corev1.DoNotSchedule {
		t.Errorf("%s: no hard spread over topology.kubernetes.io/zone: %+v", d.Name, spec.TopologySpreadConstraints)
	}
	if _, ok := spread["kubernetes.io/hostname"]; !ok {
		t.Errorf("%s: no spread over kubernetes.io/hostname", d.Name)
	}

	// Pod security.
	ps := spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser != nonrootUID ||
		ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod security context %+v", d.Name, ps)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: service account token mounted; detour does not call the API server", d.Name)
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", d.Name, len(spec.Containers))
	}
	c := &spec.Containers[0]
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatalf("%s: no container security context", d.Name)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot, sc.RunAsUser == nil || *sc.RunAsUser != nonrootUID:
		t.Errorf("%s: container may run as root: %+v", d.Name, sc)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: root filesystem is writable", d.Name)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: privilege escalation allowed", d.Name)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0:
		t.Errorf("%s: capabilities %+v, want drop ALL", d.Name, sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccomp %+v, want RuntimeDefault", d.Name, sc.SeccompProfile)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want cpu and memory requests and a memory limit", d.Name, c.Resources)
	}
	// GOMEMLIMIT follows the container's memory limit (README: Sizing).
	if e := envVar(c, "DETOUR_MEMORY_LIMIT"); e == nil || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil ||
		e.ValueFrom.ResourceFieldRef.Resource != "limits.memory" || e.ValueFrom.ResourceFieldRef.ContainerName != c.Name {
		t.Errorf("%s: DETOUR_MEMORY_LIMIT = %+v, want the downward API's limits.memory of container %s", d.Name, e, c.Name)
	}

	// Ports, listeners and gRPC probes.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	// With TLS on, the kubelet's gRPC probes (plaintext only) need the
	// plaintext health listener; without, they use the Router port.
	wantPorts := map[string]int32{"grpc": 50051, "metrics": 9090, "admin": 50052}
	probePort := int32(50051)
	if argValue(c, "--tls-cert") != "" {
		probePort = ports["health"]
		wantPorts["health"] = probePort
		if probePort == 0 || argValue(c, "--health-listen") != fmt.Sprintf(":%d", probePort) {
			t.Errorf("%s: TLS on, but no health port served by --health-listen: ports %v, args %q", d.Name, ports, c.Args)
		}
	}
	if diff := cmp.Diff(ports, wantPorts); diff != "" {
		t.Errorf("%s: container ports (-got +want):\n%s", d.Name, diff)
	}
	for _, a := range []string{"--listen=:50051", "--metrics=:9090", "--admin-listen=:50052"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("%s: missing arg %s in %q", d.Name, a, c.Args)
		}
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if p == nil || p.GRPC == nil || p.GRPC.Port != probePort || p.HTTPGet != nil || p.Exec != nil || p.TCPSocket != nil {
			t.Errorf("%s: %s probe %+v, want a gRPC probe on %d", d.Name, name, p, probePort)
		}
	}
	if l := c.Lifecycle; l == nil || l.PreStop == nil || l.PreStop.Sleep == nil || l.PreStop.Sleep.Seconds <= 0 {
		t.Errorf("%s: no preStop sleep before SIGTERM", d.Name)
	} else if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= l.PreStop.Sleep.Seconds+30 {
		t.Errorf("%s: terminationGracePeriodSeconds %v leaves no room for the preStop sleep and a 30s drain", d.Name, g)
	}
	if e := envVar(c, "DETOUR_REGION"); e == nil {
		t.Errorf("%s: no DETOUR_REGION", d.Name)
	}

	// Mounts: a read-only root needs /tmp and the last-known-good directory.
	// Secrets are mounted whole: a subPath mount never sees an update, so a
	// rotated certificate or key would not reach the pod.
	for _, m := range c.VolumeMounts {
		v := volume(d, m.Name)
		if v == nil {
			t.Errorf("%s: mount %s has no volume", d.Name, m.Name)
		} else if v.Secret != nil && (m.SubPath != "" || m.SubPathExpr != "") {
			t.Errorf("%s: Secret volume %s mounted with a subPath", d.Name, m.Name)
		}
	}
	for _, m := range []struct{ name, path string }{{"tmp", "/tmp"}, {"state", "/var/lib/detour"}} {
		if !hasMount(c, m.name, m.path) {
			t.Errorf("%s: volume %s not mounted at %s", d.Name, m.name, m.path)
		}
	}
	return c
}

func checkHPAs(t *testing.T, r *release) {
	t.Helper()
	if len(r.hpas) != len(r.deployments) {
		t.Fatalf("%d HPAs for %d Deployments", len(r.hpas), len(r.deployments))
	}
	for i, h := range r.hpas {
		d := r.deployments[i]
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != d.Name {
			t.Errorf("HPA %s targets %+v, want Deployment %s", h.Name, ref, d.Name)
		}
		if h.Spec.MinReplicas == nil || d.Spec.Replicas == nil || *h.Spec.MinReplicas != *d.Spec.Replicas {
			t.Errorf("HPA %s: minReplicas %v, want the Deployment's %v", h.Name, h.Spec.MinReplicas, d.Spec.Replicas)
		}
		if h.Spec.MinReplicas != nil && h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			t.Errorf("HPA %s: maxReplicas %d < minReplicas %d", h.Name, h.Spec.MaxReplicas, *h.Spec.MinReplicas)
		}
		if len(h.Spec.Metrics) == 0 {
			t.Errorf("HPA %s has no metric", h.Name)
		}
	}
}

// checkPDB: one budget over every pod of the release that allows a drain to
// proceed (at least one pod may go) without taking the service down.
func checkPDB(t *testing.T, r *release, replicas int32) {
	t.Helper()
	if len(r.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(r.pdbs))
	}
	p := r.pdbs[0]
	if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
		t.Fatalf("PDB must set exactly one of minAvailable and maxUnavailable: %+v", p.Spec)
	}
	var mayGo int32
	if p.Spec.MaxUnavailable != nil {
		mayGo = int32(p.Spec.MaxUnavailable.IntValue())
	} else {
		mayGo = replicas - int32(p.Spec.MinAvailable.IntValue())
	}
	if mayGo < 1 || mayGo >= replicas {
		t.Errorf("PDB lets %d of %d pods go at once; want at least 1 and fewer than all", mayGo, replicas)
	}
	for _, d := range r.deployments {
		if p.Spec.Selector == nil || !selects(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("PDB selector %v does not cover %s's pods", p.Spec.Selector, d.Name)
		}
	}
}

func checkServices(t *testing.T, r *release) {
	t.Helper()
	var headless, clusterIP int
	for _, s := range r.services {
		for _, d := range r.deployments {
			if !selects(s.Spec.Selector, d.Spec.Template.Labels) {
				t.Errorf("Service %s does not select %s's pods", s.Name, d.Name)
			}
		}
		c := r.deployments[0].Spec.Template.Spec.Containers[0]
		for _, p := range s.Spec.Ports {
			if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.String() }) {
				t.Errorf("Service %s port %s targets %s, which the container does not name", s.Name, p.Name, p.TargetPort.String())
			}
		}
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless++
		} else {
			clusterIP++
		}
		if s.Spec.Ports[0].Name != "grpc" || s.Spec.Ports[0].Port != 50051 {
			t.Errorf("Service %s: first port %+v, want grpc 50051", s.Name, s.Spec.Ports[0])
		}
	}
	if headless != 1 || clusterIP != 1 {
		t.Errorf("%d headless and %d ClusterIP Services, want one of each", headless, clusterIP)
	}
}

// checkConfig: the config document parses, and every API key it names is
// provided by the pod (env from a Secret, or a file under a mounted Secret).
// checkSizing checks that the default limits.max_inflight fits the default
// memory limit by README's sizing guide, for the default backend (an HTTPS
// provider that may answer in HTTP/1.1): 64 MiB plus 128 KiB per call in
// flight within the 90% detour gives GOMEMLIMIT.
func checkSizing(t *testing.T, r *release, c *corev1.Container) {
	t.Helper()
	var doc struct {
		Limits struct {
			MaxInflight int64 `json:"max_inflight"`
		} `json:"limits"`
	}
	for _, cm := range r.configMaps {
		if cm.Name == "detour-config" {
			if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &doc); err != nil {
				t.Fatalf("config.yaml: %v", err)
			}
		}
	}
	n := doc.Limits.MaxInflight
	limit := c.Resources.Limits.Memory().Value()
	need := 64<<20 + n*128<<10
	if n <= 0 || need > limit/100*90 {
		t.Errorf("limits.max_inflight %d needs %d MiB by the sizing guide, over 90%% of the memory limit %d MiB", n, need>>20, limit>>20)
	}
	if req := c.Resources.Requests.Memory().Value(); req != limit {
		t.Errorf("memory request %d MiB, limit %d MiB: want them equal, so that a replica holding long calls is not evicted first", req>>20, limit>>20)
	}
}

func checkConfig(t *testing.T, r *release) {
	t.Helper()
	var cm *corev1.ConfigMap
	for _, c := range r.configMaps {
		if c.Name == "detour-config" {
			cm = c
		}
	}
	if cm == nil {
		t.Fatal("no detour-config ConfigMap")
	}
	var doc struct {
		Regions []struct {
			Backends []map[string]any `json:"backends"`
		} `json:"regions"`
		Fallbacks []map[string]any `json:"fallbacks"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &doc); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	var backends []map[string]any
	for _, reg := range doc.Regions {
		backends = append(backends, reg.Backends...)
	}
	backends = append(backends, doc.Fallbacks...)
	if len(backends) == 0 {
		t.Error("config.yaml has no backend")
	}
	for _, d := range r.deployments {
		c := d.Spec.Template.Spec.Containers[0]
		for _, b := range backends {
			if env, ok := b["api_key_env"].(string); ok {
				e := envVar(&c, env)
				if e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					t.Errorf("%s: backend %v reads %s, which no Secret fills", d.Name, b["name"], env)
				}
			}
			if file, ok := b["api_key_file"].(string); ok {
				if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
					v := volume(d, m.Name)
					return v != nil && v.Secret != nil && strings.HasPrefix(file, m.MountPath+"/")
				}) {
					t.Errorf("%s: backend %v reads %s, which is not under a mounted Secret", d.Name, b["name"], file)
				}
			}
		}
	}
}

func checkDashboardConfigMap(t *testing.T, r *release, namespace string) {
	t.Helper()
	want, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.configMaps {
		if c.Name != "detour-dashboard" {
			continue
		}
		if c.Labels["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap labels %v: the Grafana sidecar wants grafana_dashboard: \"1\"", c.Labels)
		}
		if c.Namespace != namespace {
			t.Errorf("dashboard ConfigMap in %s, want %s", c.Namespace, namespace)
		}
		if got := c.Data["detour.json"]; strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("dashboard ConfigMap differs from %s: copy it to helm/detour/files/", dashboardPath)
		}
		return
	}
	t.Error("no dashboard ConfigMap")
}

func checkNetworkPolicy(t *testing.T, r *release) {
	t.Helper()
	if len(r.netpols) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(r.netpols))
	}
	np := r.netpols[0]
	for _, d := range r.deployments {
		if !selects(np.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("NetworkPolicy does not select %s's pods", d.Name)
		}
	}
	named := map[string]bool{}
	for _, p := range r.deployments[0].Spec.Template.Spec.Containers[0].Ports {
		named[p.Name] = true
	}
	var ingressPorts []string
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Errorf("ingress rule %+v admits everyone; the CI values restrict every port", rule)
		}
		for _, p := range rule.Ports {
			if !named[p.Port.String()] {
				t.Errorf("ingress port %s is not a container port name", p.Port.String())
			}
			ingressPorts = append(ingressPorts, p.Port.String())
		}
	}
	slices.Sort(ingressPorts)
	if diff := cmp.Diff(ingressPorts, []string{"admin", "grpc", "metrics"}); diff != "" {
		t.Errorf("ingress ports (-got +want):\n%s", diff)
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || len(np.Spec.Egress) == 0 {
		t.Error("egress policy missing with networkPolicy.egress.enabled")
	}
}

// checkMonitoring: the ServiceMonitor scrapes the metrics port, and the
// PrometheusRule holds rules.yaml with the bounds and labels from values.
func checkMonitoring(t *testing.T, r *release) {
	t.Helper()
	if len(r.monitors) != 1 || len(r.rules) != 1 {
		t.Fatalf("%d ServiceMonitors and %d PrometheusRules, want 1 each", len(r.monitors), len(r.rules))
	}
	var sm struct {
		Spec struct {
			Selector  struct{ MatchLabels map[string]string } `json:"selector"`
			Endpoints []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	remarshal(t, r.monitors[0], &sm)
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want port metrics, /metrics", sm.Spec.Endpoints)
	}
	// Exactly one Service, else every pod is scraped twice and every rate
	// doubles.
	var scraped []string
	for _, s := range r.services {
		if selects(sm.Spec.Selector.MatchLabels, s.Labels) {
			scraped = append(scraped, s.Name)
			if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "metrics" }) {
				t.Errorf("ServiceMonitor selects Service %s, which has no metrics port", s.Name)
			}
		}
	}
	if diff := cmp.Diff(scraped, []string{"detour"}); diff != "" {
		t.Errorf("Services the ServiceMonitor selects (-got +want):\n%s", diff)
	}

	type rule struct {
		Record string            `json:"record,omitempty"`
		Alert  string            `json:"alert,omitempty"`
		Expr   string            `json:"expr"`
		For    string            `json:"for,omitempty"`
		Labels map[string]string `json:"labels,omitempty"`
		Annot  map[string]string `json:"annotations,omitempty"`
	}
	type groups struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	var got struct {
		Spec groups `json:"spec"`
	}
	remarshal(t, r.rules[0], &got)
	var want groups
	b, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &want); err != nil {
		t.Fatal(err)
	}
	// What the CI values change.
	for _, g := range want.Groups {
		for i := range g.Rules {
			r := &g.Rules[i]
			switch r.Record {
			case "detour:call_duration_p99_bound_seconds":
				r.Expr = "vector(12.5)"
			case "detour:first_chunk_p99_bound_seconds":
				r.Expr = "vector(3)"
			}
			if r.Alert != "" {
				r.Labels["team"] = "llm-platform"
			}
		}
	}
	if diff := cmp.Diff(got.Spec, want); diff != "" {
		t.Errorf("PrometheusRule differs from rules.yaml + values (-got +want):\n%s", diff)
	}
}

func remarshal(t *testing.T, in map[string]any, out any) {
	t.Helper()
	b, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func volume(d *appsv1.Deployment, name string) *corev1.Volume {
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &d.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// argValue returns the value of a --flag=value argument, or "".
func argValue(c *corev1.Container, flag string) string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func mountAt(c *corev1.Container, path string) *corev1.VolumeMount {
	for i, m := range c.VolumeMounts {
		if m.MountPath == path {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func hasMount(c *corev1.Container, name, path string) bool {
	return slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == name && m.MountPath == path })
}
