package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/riverqueue/river/rivertype"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// kindComplete is the River kind of a job: one Complete call.
const kindComplete = "detour_complete"

// args is a job as River stores it. Tenant and Key make an idempotent
// submission unique (river:"unique").
type args struct {
	Tenant   string    `json:"tenant" river:"unique"`
	Key      string    `json:"key,omitempty" river:"unique"`
	Request  []byte    `json:"request"` // a CompleteRequest, protobuf
	Digest   string    `json:"digest"`  // of Request: a reused key must name the same request
	NotAfter time.Time `json:"not_after"`
}

func (args) Kind() string { return kindComplete }

func decodeArgs(r *rivertype.JobRow) (args, error) {
	var a args
	if err := json.Unmarshal(r.EncodedArgs, &a); err != nil {
		return a, fmt.Errorf("jobs: job %d: %w", r.ID, err)
	}
	return a, nil
}

// output is what a run records with the job's final state (River's
// RecordOutput, written in the same update as the state: a job has one
// outcome whatever runs it took).
type output struct {
	State    string `json:"state"`              // succeeded, failed, expired
	Response []byte `json:"response,omitempty"` // CompleteResponse, protobuf
	Status   []byte `json:"status,omitempty"`   // google.rpc.Status, protobuf
}

const (
	outSucceeded = "succeeded"
	outFailed    = "failed"
	outExpired   = "expired"
)

func outputOf(r *rivertype.JobRow) *output {
	b := r.Output()
	if len(b) == 0 {
		return nil
	}
	var o output
	if json.Unmarshal(b, &o) != nil {
		return nil
	}
	return &o
}

// final reports whether a job in state s changes no more.
func final(s detourv1.JobState) bool {
	switch s {
	case detourv1.JobState_JOB_STATE_QUEUED, detourv1.JobState_JOB_STATE_RUNNING:
		return false
	}
	return true
}

// view is the job as the API shows it; withRequest adds the request.
func (e *Engine) view(r *rivertype.JobRow, withRequest bool) *detourv1.Job {
	a, _ := decodeArgs(r)
	j := &detourv1.Job{
		Id:             strconv.FormatInt(r.ID, 10),
		Tenant:         a.Tenant,
		Class:          classOf(r.Priority),
		IdempotencyKey: a.Key,
		CreatedAt:      timestamppb.New(r.CreatedAt),
		Runs:           int32(max(r.Attempt, 0)),
	}
	if !a.NotAfter.IsZero() {
		j.NotAfter = timestamppb.New(a.NotAfter)
	}
	if r.FinalizedAt != nil {
		j.FinishedAt = timestamppb.New(*r.FinalizedAt)
	}
	if withRequest {
		req := &detourv1.CompleteRequest{}
		if proto.Unmarshal(a.Request, req) == nil {
			j.Request = req
		}
	}
	o := outputOf(r)
	switch r.State {
	case rivertype.JobStateRunning:
		j.State = detourv1.JobState_JOB_STATE_RUNNING
	case rivertype.JobStateCompleted:
		j.State = detourv1.JobState_JOB_STATE_SUCCEEDED
		if o != nil {
			resp := &detourv1.CompleteResponse{}
			if proto.Unmarshal(o.Response, resp) == nil {
				j.Result = resp
			}
		}
	case rivertype.JobStateCancelled, rivertype.JobStateDiscarded:
		switch {
		case o != nil && o.State == outExpired:
			j.State = detourv1.JobState_JOB_STATE_EXPIRED
		case o != nil && o.State == outFailed:
			j.State = detourv1.JobState_JOB_STATE_FAILED
		case r.State == rivertype.JobStateCancelled:
			j.State = detourv1.JobState_JOB_STATE_CANCELED
		default: // River gave up after maxRuns runs that did not end
			j.State = detourv1.JobState_JOB_STATE_FAILED
			j.Error = &detourv1.JobError{Code: int32(codes.Internal), Message: fmt.Sprintf("the job did not finish in %d runs", r.Attempt)}
		}
		if o != nil && len(o.Status) > 0 {
			st := &spb.Status{}
			if proto.Unmarshal(o.Status, st) == nil {
				j.Error = &detourv1.JobError{Code: st.GetCode(), Message: st.GetMessage(), Details: st.GetDetails()}
			}
		}
	default: // available, scheduled, retryable, pending
		j.State = detourv1.JobState_JOB_STATE_QUEUED
		if !a.NotAfter.IsZero() && time.Now().After(a.NotAfter) {
			// Its next run records the expiry; it will never be answered.
			j.State = detourv1.JobState_JOB_STATE_EXPIRED
			j.Error = expiredError()
		}
	}
	if j.State == detourv1.JobState_JOB_STATE_EXPIRED && j.Error == nil {
		j.Error = expiredError()
	}
	return j
}

func expiredError() *detourv1.JobError {
	return &detourv1.JobError{Code: int32(codes.DeadlineExceeded), Message: "the job was not answered before its not_after time"}
}

// queueOf is the River queue of a tenant's jobs: one per tenant, so that
// every replica fetches each tenant's jobs apart and one tenant's backlog
// never stands in front of another's. River queue names are lower case
// letters and digits joined by - or _; a digest keeps tenants whose names
// differ only in case or punctuation apart.
func queueOf(tenant string) string {
	var b strings.Builder
	b.WriteString("t-")
	sep := false
	for _, c := range strings.ToLower(tenant) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			if sep && b.Len() > 2 {
				b.WriteByte('-')
			}
			sep = false
			b.WriteRune(c)
			if b.Len() >= 42 {
				break
			}
			continue
		}
		sep = true
	}
	sum := sha256.Sum256([]byte(tenant))
	if b.Len() > 2 {
		b.WriteByte('-')
	}
	b.WriteString(hex.EncodeToString(sum[:4]))
	return b.String()
}

// isTenantQueue reports whether q is a queue queueOf makes.
func isTenantQueue(q string) bool { return strings.HasPrefix(q, "t-") }
