package server

import (
	"encoding/json"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// FuzzValidate checks that validate never panics, that every violation names
// a field and says why, and that a request breaking one of the documented
// rules (README, "Errors") always gets at least one violation. The input is
// a wire-encoded CompleteRequest plus the size limit; seeds are in
// testdata/fuzz/FuzzValidate, and any crasher found is kept there.
//
//	go test ./server -run='^$' -fuzz=FuzzValidate -fuzztime=60s
func FuzzValidate(f *testing.F) {
	for _, s := range validateSeeds() {
		b, err := proto.Marshal(s.req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, s.maxBytes)
	}
	f.Fuzz(func(t *testing.T, wire []byte, maxBytes int) {
		req := &detourv1.CompleteRequest{}
		if err := proto.Unmarshal(wire, req); err != nil {
			t.Skip("not a CompleteRequest")
		}
		v := validate(req, maxBytes)
		for i, fv := range v {
			if fv.GetField() == "" || fv.GetDescription() == "" {
				t.Errorf("violation %d has no field or no description: %v", i, fv)
			}
		}
		if why := brokenRule(req, maxBytes); why != "" && len(v) == 0 {
			t.Errorf("request breaks a rule (%s) but validate returned no violation: %v", why, req)
		}
	})
}

// brokenRule is an independent reading of the documented request rules: the
// first one req breaks, or "". Each range check is written so that NaN
// breaks it.
func brokenRule(req *detourv1.CompleteRequest, maxBytes int) string {
	switch {
	case req.GetModel() == "":
		return "model missing"
	case len(req.GetMessages()) == 0:
		return "no messages"
	case len(req.GetMessages()) > maxMessages:
		return "too many messages"
	}
	for i, m := range req.GetMessages() {
		switch m.GetRole() {
		case "system", "user", "assistant", "tool":
		default:
			return fmt.Sprintf("messages[%d].role %q", i, m.GetRole())
		}
	}
	if req.Temperature != nil && !(req.GetTemperature() >= 0 && req.GetTemperature() <= 2) {
		return fmt.Sprintf("temperature %v outside [0, 2]", req.GetTemperature())
	}
	if req.TopP != nil && !(req.GetTopP() > 0 && req.GetTopP() <= 1) {
		return fmt.Sprintf("top_p %v outside (0, 1]", req.GetTopP())
	}
	if req.GetMaxTokens() < 0 {
		return "negative max_tokens"
	}
	if len(req.GetStop()) > maxStop {
		return "too many stop sequences"
	}
	for name, d := range map[string]*durationpb.Duration{"max_stale": req.GetCache().GetMaxStale(), "ttl": req.GetCache().GetTtl()} {
		if d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
			return "cache." + name + " invalid or negative"
		}
	}
	if maxBytes > 0 && proto.Size(req) > maxBytes {
		return "request over the size limit"
	}
	return brokenChatRule(req)
}

// brokenChatRule reads the rules of the fields for tools, structured output
// and sampling controls (router.proto's comments).
func brokenChatRule(req *detourv1.CompleteRequest) string {
	for i, m := range req.GetMessages() {
		if m.GetRole() == "tool" && m.GetToolCallId() == "" {
			return fmt.Sprintf("messages[%d] is a tool message without tool_call_id", i)
		}
	}
	for name, p := range map[string]*float64{"frequency_penalty": req.FrequencyPenalty, "presence_penalty": req.PresencePenalty} {
		if p != nil && !(*p >= -2 && *p <= 2) {
			return name + " outside [-2, 2]"
		}
	}
	if req.TopLogprobs != nil && !(req.GetTopLogprobs() >= 0 && req.GetTopLogprobs() <= 20) {
		return "top_logprobs outside [0, 20]"
	}
	if req.GetMaxCompletionTokens() < 0 {
		return "negative max_completion_tokens"
	}
	if rf := req.GetResponseFormat(); rf != nil && rf.GetType() != "text" && rf.GetType() != "json_object" && rf.GetType() != "json_schema" {
		return "response_format.type unknown"
	}
	if e := req.GetExtraBody(); e != "" {
		var obj map[string]json.RawMessage
		if len(e) > 64<<10 || json.Unmarshal([]byte(e), &obj) != nil || obj == nil {
			return "extra_body not a JSON object within 64 KiB"
		}
	}
	if len(req.GetTools()) > 128 {
		return "more than 128 tools"
	}
	return ""
}

type validateSeed struct {
	req      *detourv1.CompleteRequest
	maxBytes int
}

func validateSeeds() []validateSeed {
	ok := func() *detourv1.CompleteRequest {
		return &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{{Role: "user", Content: "hello"}}}
	}
	with := func(f func(r *detourv1.CompleteRequest)) *detourv1.CompleteRequest {
		r := ok()
		f(r)
		return r
	}
	return []validateSeed{
		{ok(), 0},
		{ok(), 1 << 20},
		{ok(), 8},
		{&detourv1.CompleteRequest{}, 0},
		{with(func(r *detourv1.CompleteRequest) {
			r.Temperature, r.TopP, r.MaxTokens = proto.Float64(0.7), proto.Float64(0.9), 256
			r.Stop = []string{"\n\n", "END"}
			r.User = "u-1"
			r.Routing = &detourv1.RoutingHints{PreferRegion: "eu-west", NoFallback: true}
			r.Cache = &detourv1.CacheHints{MaxStale: durationpb.New(60e9), Ttl: durationpb.New(300e9)}
			r.Messages = append([]*detourv1.Message{{Role: "system", Content: "be brief"}}, r.Messages...)
			r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", Content: "hi"}, &detourv1.Message{Role: "tool", Content: "{}", Name: "f"})
		}), 0},
		{with(func(r *detourv1.CompleteRequest) { r.Temperature = proto.Float64(2.5) }), 0},
		{with(func(r *detourv1.CompleteRequest) { r.TopP = proto.Float64(0) }), 0},
		{with(func(r *detourv1.CompleteRequest) { r.MaxTokens = -1 }), 0},
		{with(func(r *detourv1.CompleteRequest) { r.Stop = []string{"a", "b", "c", "d", "e"} }), 0},
		{with(func(r *detourv1.CompleteRequest) { r.Messages[0].Role = "robot" }), 0},
		{with(func(r *detourv1.CompleteRequest) {
			r.Cache = &detourv1.CacheHints{Ttl: &durationpb.Duration{Seconds: -1}}
		}), 0},
		{with(func(r *detourv1.CompleteRequest) {
			r.Cache = &detourv1.CacheHints{MaxStale: &durationpb.Duration{Seconds: 1, Nanos: -1}}
		}), 0},
		{chatRequest(), 0},
		{func() *detourv1.CompleteRequest {
			r := chatRequest()
			r.Messages[2].ToolCallId = "call_x"
			r.FrequencyPenalty = proto.Float64(3)
			r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: &detourv1.JsonSchema{Name: "s", Schema: "[]"}}
			r.ExtraBody = `{"stream": false}`
			return r
		}(), 0},
	}
}
