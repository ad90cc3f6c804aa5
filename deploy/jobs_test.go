package deploy_test

import (
	"slices"
	"testing"
)

// TestChartJobs: with jobs.database.secretName the pods get the database
// URL from that Secret (env DETOUR_JOBS_DB, never a value in the chart),
// the jobs flags from values, and, with an egress policy, Postgres's port;
// without it no jobs flag or variable appears.
func TestChartJobs(t *testing.T) {
	r := render(t, "--set", "jobs.database.secretName=detour-jobs-db", "--set", "jobs.workers=8",
		"--set", "networkPolicy.enabled=true", "--set", "networkPolicy.egress.enabled=true")
	c := checkDeployment(t, r.deployments[0])
	e := envVar(c, "DETOUR_JOBS_DB")
	if e == nil || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name != "detour-jobs-db" || e.ValueFrom.SecretKeyRef.Key != "url" {
		t.Errorf("DETOUR_JOBS_DB = %+v, want the key url of Secret detour-jobs-db", e)
	}
	for _, a := range []string{"--jobs-retention=24h", "--jobs-workers=8", "--jobs-max-queued=100000", "--jobs-max-age=24h",
		"--jobs-attempt-timeout=5m", "--jobs-reserve=0.1"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("missing arg %s in %q", a, c.Args)
		}
	}
	postgres := false
	for _, rule := range r.netpols[0].Spec.Egress {
		for _, p := range rule.Ports {
			if p.Port != nil && p.Port.IntValue() == 5432 {
				postgres = true
			}
		}
	}
	if !postgres {
		t.Errorf("egress %+v lacks Postgres's port 5432", r.netpols[0].Spec.Egress)
	}

	c = checkDeployment(t, render(t).deployments[0])
	if envVar(c, "DETOUR_JOBS_DB") != nil || slices.ContainsFunc(c.Args, func(a string) bool { return len(a) > 7 && a[:7] == "--jobs-" }) {
		t.Errorf("jobs flags or DETOUR_JOBS_DB without jobs.database.secretName: %q", c.Args)
	}
}
