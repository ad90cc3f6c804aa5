package server

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Request limits beyond the configurable size.
const (
	maxMessages = 10000
	maxStop     = 4
	// maxRoleViolations bounds the role violations listed one by one; the
	// rest are counted in one.
	maxRoleViolations = 10
)

// validate lists every problem with req as field violations; nil means valid.
func validate(req *detourv1.CompleteRequest, maxBytes int) []*errdetails.BadRequest_FieldViolation {
	var v []*errdetails.BadRequest_FieldViolation
	bad := func(field, format string, args ...any) {
		v = append(v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
	}
	if req.GetModel() == "" {
		bad("model", "model is required")
	}
	msgs := req.GetMessages()
	switch {
	case len(msgs) == 0:
		bad("messages", "at least one message is required")
	case len(msgs) > maxMessages:
		bad("messages", "%d messages exceed the limit of %d", len(msgs), maxMessages)
	}
	badRoles := 0
	for i, m := range msgs {
		if i >= maxMessages {
			break
		}
		switch m.GetRole() {
		case "system", "user", "assistant", "tool":
			continue
		}
		if badRoles++; badRoles > maxRoleViolations {
			continue
		}
		if m.GetRole() == "" {
			bad(fmt.Sprintf("messages[%d].role", i), "role is required (system, user, assistant or tool)")
		} else {
			bad(fmt.Sprintf("messages[%d].role", i), "role %q must be one of system, user, assistant, tool", clip(m.GetRole()))
		}
	}
	if n := badRoles - maxRoleViolations; n > 0 {
		bad("messages", "%d more messages have a missing or unknown role", n)
	}
	// Written as !(in range) so that NaN is refused too.
	if req.Temperature != nil && !(req.GetTemperature() >= 0 && req.GetTemperature() <= 2) {
		bad("temperature", "temperature %g must be in [0, 2]", req.GetTemperature())
	}
	if req.TopP != nil && !(req.GetTopP() > 0 && req.GetTopP() <= 1) {
		bad("top_p", "top_p %g must be in (0, 1]", req.GetTopP())
	}
	if req.GetMaxTokens() < 0 {
		bad("max_tokens", "max_tokens %d must be >= 0", req.GetMaxTokens())
	}
	if len(req.GetStop()) > maxStop {
		bad("stop", "%d stop sequences exceed the limit of %d", len(req.GetStop()), maxStop)
	}
	validateChat(req, bad)
	if d := req.GetCache().GetMaxStale(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		bad("cache.max_stale", "max_stale must be a non-negative duration")
	}
	if d := req.GetCache().GetTtl(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		bad("cache.ttl", "ttl must be a non-negative duration")
	}
	if d := req.GetRouting().GetFirstTokenTimeout(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		bad("routing.first_token_timeout", "first_token_timeout must be a non-negative duration")
	}
	if d := req.GetRouting().GetHedgeAfter(); d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		bad("routing.hedge_after", "hedge_after must be a non-negative duration")
	}
	if c := req.GetRouting().GetContinuation(); detourv1.Continuation_name[int32(c)] == "" {
		bad("routing.continuation", "unknown continuation %d", c)
	}
	if maxBytes > 0 {
		if n := proto.Size(req); n > maxBytes {
			bad("messages", "request is %d bytes, over the limit of %d bytes", n, maxBytes)
		}
	}
	return v
}

// clip keeps a caller's value short enough to echo in an error, and valid
// UTF-8.
func clip(s string) string { return excerpt.Clip(s, 32) }

func badRequest(v []*errdetails.BadRequest_FieldViolation) *errdetails.BadRequest {
	return &errdetails.BadRequest{FieldViolations: v}
}

// describe joins the violations into the status message, so callers without
// detail support still see every reason.
func describe(v []*errdetails.BadRequest_FieldViolation) string {
	msg := "invalid request: "
	for i, f := range v {
		if i > 0 {
			msg += "; "
		}
		msg += f.GetField() + ": " + f.GetDescription()
	}
	return msg
}
