package server

import (
	"encoding/json"
	"fmt"
	"strings"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/provider"
)

// Limits of the tool-calling and output fields.
const (
	maxTools       = 128
	maxSchemaBytes = 64 << 10 // a tool's parameters, a response format's schema
	maxTopLogprobs = 20
)

// validateChat lists the problems with the fields for reasoning, tools,
// structured output and sampling that the API gained after its first
// version, one violation per problem, through bad.
func validateChat(req *detourv1.CompleteRequest, bad func(field, format string, args ...any)) {
	calls := map[string]bool{} // ids of the tool calls of assistant turns so far
	for i, m := range req.GetMessages() {
		if i >= maxMessages {
			break
		}
		at := fmt.Sprintf("messages[%d]", i)
		role := m.GetRole()
		if m.GetReasoningContent() != "" && role != "assistant" {
			bad(at+".reasoning_content", "only an assistant message carries reasoning_content")
		}
		if len(m.GetToolCalls()) > 0 && role != "assistant" {
			bad(at+".tool_calls", "only an assistant message carries tool_calls")
		}
		for j, tc := range m.GetToolCalls() {
			tat := fmt.Sprintf("%s.tool_calls[%d]", at, j)
			if tc.GetId() == "" {
				bad(tat+".id", "a tool call needs the id the answer gave it")
			}
			calls[tc.GetId()] = true
			checkToolType(bad, tat+".type", tc.GetType())
			if problem := functionName(tc.GetFunction().GetName()); problem != "" {
				bad(tat+".function.name", "%s", problem)
			}
		}
		if m.GetPrefix() && (role != "assistant" || i != len(req.GetMessages())-1) {
			bad(at+".prefix", "only the last message, an assistant one, can be a prefix to continue")
		}
		switch {
		case role == "tool" && m.GetToolCallId() == "":
			bad(at+".tool_call_id", "a tool message needs the tool_call_id of the call it answers")
		case role == "tool" && !calls[m.GetToolCallId()]:
			bad(at+".tool_call_id", "tool_call_id %q names no tool call of an earlier assistant message", clip(m.GetToolCallId()))
		case role != "tool" && m.GetToolCallId() != "":
			bad(at+".tool_call_id", "only a tool message carries tool_call_id")
		}
	}

	tools := map[string]bool{}
	if len(req.GetTools()) > maxTools {
		bad("tools", "%d tools exceed the limit of %d", len(req.GetTools()), maxTools)
	}
	for i, t := range req.GetTools() {
		if i >= maxTools {
			break
		}
		at := fmt.Sprintf("tools[%d]", i)
		checkToolType(bad, at+".type", t.GetType())
		f := t.GetFunction()
		if f == nil {
			bad(at+".function", "a tool needs a function")
			continue
		}
		if problem := functionName(f.GetName()); problem != "" {
			bad(at+".function.name", "%s", problem)
		} else if tools[f.GetName()] {
			bad(at+".function.name", "function %q is named twice", f.GetName())
		}
		tools[f.GetName()] = true
		if problem := jsonObject(f.GetParameters(), maxSchemaBytes); f.GetParameters() != "" && problem != "" {
			bad(at+".function.parameters", "parameters %s", problem)
		}
	}
	switch c := req.GetToolChoice().GetChoice().(type) {
	case *detourv1.ToolChoice_Mode:
		switch c.Mode {
		case "none":
		case "auto", "required":
			if len(req.GetTools()) == 0 {
				bad("tool_choice.mode", "tool_choice %q needs tools", c.Mode)
			}
		default:
			bad("tool_choice.mode", "mode %q must be one of none, auto, required", clip(c.Mode))
		}
	case *detourv1.ToolChoice_Function:
		if !tools[c.Function] {
			bad("tool_choice.function", "function %q is not one of the request's tools", clip(c.Function))
		}
	default:
		if req.GetToolChoice() != nil {
			bad("tool_choice", "set mode or function")
		}
	}
	if req.ParallelToolCalls != nil && len(req.GetTools()) == 0 {
		bad("parallel_tool_calls", "parallel_tool_calls needs tools")
	}

	if rf := req.GetResponseFormat(); rf != nil {
		switch rf.GetType() {
		case "text", "json_object":
			if rf.GetJsonSchema() != nil {
				bad("response_format.json_schema", "json_schema goes with type json_schema only")
			}
		case "json_schema":
			js := rf.GetJsonSchema()
			if js == nil {
				bad("response_format.json_schema", "type json_schema needs json_schema")
				break
			}
			if problem := functionName(js.GetName()); problem != "" {
				bad("response_format.json_schema.name", "%s", problem)
			}
			if problem := jsonObject(js.GetSchema(), maxSchemaBytes); problem != "" {
				bad("response_format.json_schema.schema", "schema %s", problem)
			}
		default:
			bad("response_format.type", "type %q must be one of text, json_object, json_schema", clip(rf.GetType()))
		}
	}
	if th := req.GetThinking(); th != nil && th.GetType() != "enabled" && th.GetType() != "disabled" {
		bad("thinking.type", "type %q must be enabled or disabled", clip(th.GetType()))
	}
	if e := req.GetReasoningEffort(); e != "" && !lowerWord(e) {
		bad("reasoning_effort", "reasoning_effort %q must be a word such as low, medium or high", clip(e))
	}
	// Written as !(in range) so that NaN is refused too.
	if req.FrequencyPenalty != nil && !(req.GetFrequencyPenalty() >= -2 && req.GetFrequencyPenalty() <= 2) {
		bad("frequency_penalty", "frequency_penalty %g must be in [-2, 2]", req.GetFrequencyPenalty())
	}
	if req.PresencePenalty != nil && !(req.GetPresencePenalty() >= -2 && req.GetPresencePenalty() <= 2) {
		bad("presence_penalty", "presence_penalty %g must be in [-2, 2]", req.GetPresencePenalty())
	}
	if req.TopLogprobs != nil {
		switch {
		case req.GetTopLogprobs() < 0 || req.GetTopLogprobs() > maxTopLogprobs:
			bad("top_logprobs", "top_logprobs %d must be in [0, %d]", req.GetTopLogprobs(), maxTopLogprobs)
		case !req.GetLogprobs():
			bad("top_logprobs", "top_logprobs needs logprobs")
		}
	}
	if req.GetMaxCompletionTokens() < 0 {
		bad("max_completion_tokens", "max_completion_tokens %d must be >= 0", req.GetMaxCompletionTokens())
	}
	if err := provider.CheckExtraBody(req.GetExtraBody()); err != nil {
		bad("extra_body", "%s", strings.TrimPrefix(err.Error(), provider.ErrExtraBody.Error()+": "))
	}
}

func checkToolType(bad func(field, format string, args ...any), field, typ string) {
	if typ != "" && typ != "function" {
		bad(field, "type %q must be function", clip(typ))
	}
}

// functionName says what is wrong with a function or schema name, or "".
// OpenAI's rule: 1 to 64 letters, digits, underscores and dashes.
func functionName(name string) string {
	if name == "" {
		return "name is required"
	}
	if len(name) > 64 {
		return fmt.Sprintf("name %q is longer than 64 characters", clip(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Sprintf("name %q may hold only letters, digits, '_' and '-'", clip(name))
		}
	}
	return ""
}

// jsonObject says what keeps s from being one JSON object of at most limit
// bytes, or "".
func jsonObject(s string, limit int) string {
	switch {
	case len(s) > limit:
		return fmt.Sprintf("is %d bytes, over the limit of %d", len(s), limit)
	case strings.TrimSpace(s) == "":
		return "must be a JSON object"
	case !json.Valid([]byte(s)):
		return "is not valid JSON"
	case strings.TrimLeft(s, " \t\r\n")[0] != '{':
		return "must be a JSON object"
	}
	return ""
}

func lowerWord(s string) bool {
	if len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_') {
			return false
		}
	}
	return true
}
