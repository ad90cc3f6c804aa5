package server

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// chatRequest is a valid request using tools: a call answered by a tool
// message, offered tools, JSON output and sampling controls.
func chatRequest() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model: "deepseek-chat",
		Messages: []*detourv1.Message{
			{Role: "user", Content: "Weather in Paris?"},
			{Role: "assistant", ReasoningContent: "Need the tool.", ToolCalls: []*detourv1.ToolCall{{Id: "call_1", Type: "function",
				Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: `{"city":"Paris"}`}}}},
			{Role: "tool", ToolCallId: "call_1", Content: `{"temp_c":21}`},
		},
		Tools: []*detourv1.Tool{{Type: "function", Function: &detourv1.FunctionDefinition{Name: "get_weather",
			Parameters: `{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`}}},
		ToolChoice:        &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "auto"}},
		ParallelToolCalls: proto.Bool(true),
		ResponseFormat:    &detourv1.ResponseFormat{Type: "json_object"},
		Thinking:          &detourv1.Thinking{Type: "enabled"},
		ReasoningEffort:   "high",
		FrequencyPenalty:  proto.Float64(-2),
		PresencePenalty:   proto.Float64(2),
		Seed:              proto.Int64(7),
		Logprobs:          true,
		TopLogprobs:       proto.Int32(20),
		ExtraBody:         `{"top_k": 40, "repetition_penalty": 1.1}`,
	}
}

func TestValidateChat(t *testing.T) {
	nan := 0.0
	nan /= nan
	tests := []struct {
		name   string
		change func(r *detourv1.CompleteRequest)
		want   []string // the fields of the violations, in order
	}{
		{name: "valid", change: func(*detourv1.CompleteRequest) {}},
		{name: "tool_choice none without tools", change: func(r *detourv1.CompleteRequest) {
			r.Messages, r.Tools, r.ParallelToolCalls = r.Messages[:1], nil, nil
			r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "none"}}
		}},
		{name: "json_schema", change: func(r *detourv1.CompleteRequest) {
			r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: &detourv1.JsonSchema{
				Name: "verdict", Schema: `{"type":"object"}`, Strict: proto.Bool(true)}}
		}},
		{name: "a prefix to continue", change: func(r *detourv1.CompleteRequest) {
			r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", Content: "The answer is", Prefix: true})
		}},
		{name: "prefix not on the last message, and on a user one", change: func(r *detourv1.CompleteRequest) {
			r.Messages[0].Prefix = true
			r.Messages[1].Prefix = true
		}, want: []string{"messages[0].prefix", "messages[1].prefix"}},
		{name: "routing hints for streams", change: func(r *detourv1.CompleteRequest) {
			r.Routing = &detourv1.RoutingHints{FirstTokenTimeout: durationpb.New(-time.Second), HedgeAfter: durationpb.New(-time.Second),
				Continuation: detourv1.Continuation(7)}
		}, want: []string{"routing.first_token_timeout", "routing.hedge_after", "routing.continuation"}},
		{name: "tool message without tool_call_id", change: func(r *detourv1.CompleteRequest) { r.Messages[2].ToolCallId = "" },
			want: []string{"messages[2].tool_call_id"}},
		{name: "tool_call_id of no earlier call", change: func(r *detourv1.CompleteRequest) { r.Messages[2].ToolCallId = "call_9" },
			want: []string{"messages[2].tool_call_id"}},
		{name: "tool_call_id of a later call", change: func(r *detourv1.CompleteRequest) {
			r.Messages[1], r.Messages[2] = r.Messages[2], r.Messages[1]
		}, want: []string{"messages[1].tool_call_id"}},
		{name: "tool_call_id on a user message", change: func(r *detourv1.CompleteRequest) { r.Messages[0].ToolCallId = "call_1" },
			want: []string{"messages[0].tool_call_id"}},
		{name: "tool calls and reasoning on a user message", change: func(r *detourv1.CompleteRequest) {
			r.Messages[0].ToolCalls = r.Messages[1].ToolCalls
			r.Messages[0].ReasoningContent = "no"
		}, want: []string{"messages[0].reasoning_content", "messages[0].tool_calls"}},
		{name: "tool call without id, bad type and name", change: func(r *detourv1.CompleteRequest) {
			r.Messages[1].ToolCalls = append(r.Messages[1].ToolCalls, &detourv1.ToolCall{Type: "shell",
				Function: &detourv1.FunctionCall{Name: "rm -rf"}})
		}, want: []string{"messages[1].tool_calls[1].id", "messages[1].tool_calls[1].type", "messages[1].tool_calls[1].function.name"}},
		{name: "tool names", change: func(r *detourv1.CompleteRequest) {
			r.Tools = append(r.Tools,
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "get_weather"}},
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "get weather"}},
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: strings.Repeat("f", 65)}},
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{}},
				&detourv1.Tool{Type: "retrieval"})
		}, want: []string{"tools[1].function.name", "tools[2].function.name", "tools[3].function.name", "tools[4].function.name",
			"tools[5].type", "tools[5].function"}},
		{name: "tool parameters", change: func(r *detourv1.CompleteRequest) {
			r.Tools = append(r.Tools,
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "a", Parameters: `[1]`}},
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "b", Parameters: `{"type":`}},
				&detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "c", Parameters: `{"description":"` + strings.Repeat("x", maxSchemaBytes) + `"}`}})
		}, want: []string{"tools[1].function.parameters", "tools[2].function.parameters", "tools[3].function.parameters"}},
		{name: "too many tools", change: func(r *detourv1.CompleteRequest) {
			r.Tools = nil
			for i := range maxTools + 1 {
				r.Tools = append(r.Tools, &detourv1.Tool{Function: &detourv1.FunctionDefinition{Name: "f" + strings.Repeat("x", i%60) + string(rune('a'+i%26)) + string(rune('a'+i/26))}})
			}
			r.ToolChoice = nil
		}, want: []string{"tools"}},
		{name: "tool_choice", change: func(r *detourv1.CompleteRequest) {
			r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "any"}}
		}, want: []string{"tool_choice.mode"}},
		{name: "tool_choice of no tool", change: func(r *detourv1.CompleteRequest) {
			r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Function{Function: "get_time"}}
		}, want: []string{"tool_choice.function"}},
		{name: "tool_choice empty", change: func(r *detourv1.CompleteRequest) { r.ToolChoice = &detourv1.ToolChoice{} },
			want: []string{"tool_choice"}},
		{name: "tool_choice and parallel_tool_calls without tools", change: func(r *detourv1.CompleteRequest) {
			r.Messages, r.Tools = r.Messages[:1], nil
			r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "required"}}
		}, want: []string{"tool_choice.mode", "parallel_tool_calls"}},
		{name: "response_format type", change: func(r *detourv1.CompleteRequest) { r.ResponseFormat.Type = "xml" },
			want: []string{"response_format.type"}},
		{name: "json_schema missing", change: func(r *detourv1.CompleteRequest) { r.ResponseFormat.Type = "json_schema" },
			want: []string{"response_format.json_schema"}},
		{name: "json_schema with json_object", change: func(r *detourv1.CompleteRequest) {
			r.ResponseFormat.JsonSchema = &detourv1.JsonSchema{Name: "x", Schema: "{}"}
		}, want: []string{"response_format.json_schema"}},
		{name: "json_schema name and schema", change: func(r *detourv1.CompleteRequest) {
			r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: &detourv1.JsonSchema{Schema: `"object"`}}
		}, want: []string{"response_format.json_schema.name", "response_format.json_schema.schema"}},
		{name: "json_schema too large", change: func(r *detourv1.CompleteRequest) {
			r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: &detourv1.JsonSchema{Name: "big",
				Schema: `{"enum":["` + strings.Repeat("x", maxSchemaBytes) + `"]}`}}
		}, want: []string{"response_format.json_schema.schema"}},
		{name: "thinking and effort", change: func(r *detourv1.CompleteRequest) {
			r.Thinking.Type = "on"
			r.ReasoningEffort = "HIGH!"
		}, want: []string{"thinking.type", "reasoning_effort"}},
		{name: "penalties out of range", change: func(r *detourv1.CompleteRequest) {
			r.FrequencyPenalty, r.PresencePenalty = proto.Float64(2.1), proto.Float64(nan)
		}, want: []string{"frequency_penalty", "presence_penalty"}},
		{name: "top_logprobs out of range", change: func(r *detourv1.CompleteRequest) { r.TopLogprobs = proto.Int32(21) },
			want: []string{"top_logprobs"}},
		{name: "top_logprobs without logprobs", change: func(r *detourv1.CompleteRequest) { r.Logprobs = false },
			want: []string{"top_logprobs"}},
		{name: "max_completion_tokens", change: func(r *detourv1.CompleteRequest) { r.MaxCompletionTokens = -1 },
			want: []string{"max_completion_tokens"}},
		{name: "extra_body not an object", change: func(r *detourv1.CompleteRequest) { r.ExtraBody = `[1, 2]` },
			want: []string{"extra_body"}},
		{name: "extra_body not JSON", change: func(r *detourv1.CompleteRequest) { r.ExtraBody = `{"top_k": }` },
			want: []string{"extra_body"}},
		{name: "extra_body with trailing data", change: func(r *detourv1.CompleteRequest) { r.ExtraBody = `{} {}` },
			want: []string{"extra_body"}},
		{name: "extra_body sets the model", change: func(r *detourv1.CompleteRequest) { r.ExtraBody = `{"model": "gpt-4o"}` },
			want: []string{"extra_body"}},
		{name: "extra_body member twice", change: func(r *detourv1.CompleteRequest) { r.ExtraBody = `{"top_k": 1, "top_k": 2}` },
			want: []string{"extra_body"}},
		{name: "extra_body too large", change: func(r *detourv1.CompleteRequest) {
			r.ExtraBody = `{"x":"` + strings.Repeat("y", 64<<10) + `"}`
		}, want: []string{"extra_body"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := chatRequest()
			tt.change(r)
			var got []string
			for _, v := range validate(r, 0) {
				got = append(got, v.GetField())
				if v.GetDescription() == "" {
					t.Errorf("violation of %s has no description", v.GetField())
				}
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("violations (-got +want):\n%s", diff)
			}
		})
	}
}
