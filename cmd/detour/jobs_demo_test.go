//go:build !nodemo

package main

import (
	"regexp"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// TestDemoAcceptsJobs follows the banner's grpcurl lines: the demo serves
// detour.v1.Jobs on SQLite, and the job submitted first is "1".
func TestDemoAcceptsJobs(t *testing.T) {
	addr, bannerText := startDemo(t, 0)
	submit := regexp.MustCompile(`grpcurl -plaintext -d '(\{"request".*\})' ` + regexp.QuoteMeta(addr.String()) + ` detour.v1.Jobs/Submit\n`).FindStringSubmatch(bannerText)
	watch := regexp.MustCompile(`grpcurl -plaintext -d '(\{"id":"1"\})' ` + regexp.QuoteMeta(addr.String()) + ` detour.v1.Jobs/Watch\n`).FindStringSubmatch(bannerText)
	if submit == nil || watch == nil {
		t.Fatalf("banner lacks the Jobs Submit and Watch lines:\n%s", bannerText)
	}
	var req detourv1.SubmitRequest
	if err := protojson.Unmarshal([]byte(submit[1]), &req); err != nil {
		t.Fatalf("banner's Submit body: %v", err)
	}
	c := dialJobs(t, addr.String())
	job, err := c.Submit(callCtx(t), &req)
	if err != nil {
		t.Fatal(err)
	}
	if job.GetId() != "1" || job.GetState() != detourv1.JobState_JOB_STATE_QUEUED {
		t.Errorf("first demo job %v, want id 1, QUEUED", job)
	}
	last := watchToEnd(t, c, "1")
	if last.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED || last.GetResult().GetContent() == "" {
		t.Errorf("demo job ended %v, want SUCCEEDED with an answer", last)
	}
}
