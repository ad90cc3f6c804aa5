package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// TestPrintJSONIsStable: protojson varies its whitespace between runs on
// purpose; detourctl's -o json must not (scripts and tests grep it).
func TestPrintJSONIsStable(t *testing.T) {
	j := &detourv1.Job{Id: "j-1", Tenant: "acme", State: detourv1.JobState_JOB_STATE_CANCELED, Runs: 2}
	var first bytes.Buffer
	if err := printJSON(&first, j, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"state": "JOB_STATE_CANCELED"`, `"tenant": "acme"`, "\n  \"id\": \"j-1\""} {
		if !strings.Contains(first.String(), want) {
			t.Errorf("printJSON wrote\n%s\nwant it to contain %q", first.String(), want)
		}
	}
	if !json.Valid(first.Bytes()) {
		t.Errorf("printJSON wrote invalid JSON:\n%s", first.String())
	}
	var b bytes.Buffer
	if err := printJSON(&b, &detourv1.StatusResponse{}, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"backends": []`) {
		t.Errorf("printJSON with unpopulated fields wrote\n%s\nwant the empty backends list", b.String())
	}
}
