package cache

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func ptr[T any](v T) *T { return &v }

// baseRequest is a request with every field set.
func baseRequest() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model: "deepseek-chat",
		Messages: []*detourv1.Message{
			{Role: "system", Content: "Classify the sentiment."},
			{Role: "user", Content: "I love it", Name: "alice"},
		},
		Temperature: ptr(0.0),
		TopP:        ptr(0.9),
		MaxTokens:   64,
		Stop:        []string{"\n", "END"},
		User:        "u-1",
		Routing:     &detourv1.RoutingHints{PreferRegion: "eu-west"},
		Cache:       &detourv1.CacheHints{Ttl: durationpb.New(60e9)},
	}
}

func TestKeyOfSame(t *testing.T) {
	tests := []struct {
		name   string
		change func(r *detourv1.CompleteRequest)
	}{
		{name: "identical", change: func(r *detourv1.CompleteRequest) {}},
		{name: "routing hints", change: func(r *detourv1.CompleteRequest) {
			r.Routing = &detourv1.RoutingHints{PreferRegion: "us-east", NoFallback: true}
		}},
		{name: "no routing hints", change: func(r *detourv1.CompleteRequest) { r.Routing = nil }},
		{name: "cache hints", change: func(r *detourv1.CompleteRequest) {
			r.Cache = &detourv1.CacheHints{ForceCache: true, MaxStale: durationpb.New(1e9)}
		}},
		{name: "user without PerUser", change: func(r *detourv1.CompleteRequest) { r.User = "u-2" }},
		{name: "role case and spaces", change: func(r *detourv1.CompleteRequest) { r.Messages[1].Role = " User " }},
		{name: "content outer whitespace", change: func(r *detourv1.CompleteRequest) { r.Messages[1].Content = "\n I love it \t" }},
		{name: "name outer whitespace", change: func(r *detourv1.CompleteRequest) { r.Messages[1].Name = "alice " }},
		{name: "model outer whitespace", change: func(r *detourv1.CompleteRequest) { r.Model = " deepseek-chat" }},
		{name: "stop order", change: func(r *detourv1.CompleteRequest) { r.Stop = []string{"END", "\n"} }},
		{name: "stop duplicates", change: func(r *detourv1.CompleteRequest) { r.Stop = []string{"END", "\n", "END"} }},
	}
	want := KeyOf(baseRequest(), "", false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := baseRequest()
			tt.change(r)
			if got := KeyOf(r, "", false); got != want {
				t.Errorf("KeyOf changed: %v, want %v", got, want)
			}
		})
	}
	t.Run("negative zero", func(t *testing.T) {
		r := baseRequest()
		negZero := 0.0
		negZero = -negZero
		r.Temperature = &negZero
		if got := KeyOf(r, "", false); got != want {
			t.Errorf("KeyOf(-0) = %v, want %v", got, want)
		}
	})
}

// Answer-changing fields: each change must change the key.
var keyChanges = []struct {
	name   string
	field  string // the CompleteRequest or Message field it changes
	change func(r *detourv1.CompleteRequest)
}{
	{"model", "model", func(r *detourv1.CompleteRequest) { r.Model = "deepseek-reasoner" }},
	{"role", "role", func(r *detourv1.CompleteRequest) { r.Messages[1].Role = "assistant" }},
	{"content", "content", func(r *detourv1.CompleteRequest) { r.Messages[1].Content = "I hate it" }},
	{"inner whitespace", "content", func(r *detourv1.CompleteRequest) { r.Messages[1].Content = "I  love it" }},
	{"name", "name", func(r *detourv1.CompleteRequest) { r.Messages[1].Name = "bob" }},
	{"no name", "name", func(r *detourv1.CompleteRequest) { r.Messages[1].Name = "" }},
	{"message order", "messages", func(r *detourv1.CompleteRequest) { slices.Reverse(r.Messages) }},
	{"one more message", "messages", func(r *detourv1.CompleteRequest) {
		r.Messages = append(r.Messages, &detourv1.Message{Role: "user"})
	}},
	{"content moved between messages", "messages", func(r *detourv1.CompleteRequest) {
		r.Messages[0].Content += r.Messages[1].Content[:2]
		r.Messages[1].Content = r.Messages[1].Content[2:]
	}},
	{"temperature", "temperature", func(r *detourv1.CompleteRequest) { r.Temperature = ptr(0.7) }},
	{"temperature unset", "temperature", func(r *detourv1.CompleteRequest) { r.Temperature = nil }},
	{"top_p", "top_p", func(r *detourv1.CompleteRequest) { r.TopP = ptr(1.0) }},
	{"top_p unset", "top_p", func(r *detourv1.CompleteRequest) { r.TopP = nil }},
	{"max_tokens", "max_tokens", func(r *detourv1.CompleteRequest) { r.MaxTokens = 65 }},
	{"stop", "stop", func(r *detourv1.CompleteRequest) { r.Stop = []string{"\n"} }},
	{"stop whitespace", "stop", func(r *detourv1.CompleteRequest) { r.Stop = []string{"\n", "END "} }},

	{"reasoning_content", "reasoning_content", func(r *detourv1.CompleteRequest) {
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ReasoningContent: "hmm"})
	}},
	{"tool_calls", "tool_calls", func(r *detourv1.CompleteRequest) {
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{toolCall()}})
	}},
	{"tool call id", "ToolCall.id", func(r *detourv1.CompleteRequest) {
		tc := toolCall()
		tc.Id = "call_2"
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{tc}})
	}},
	{"tool call type", "ToolCall.type", func(r *detourv1.CompleteRequest) {
		tc := toolCall()
		tc.Type = "custom"
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{tc}})
	}},
	{"tool call function name", "FunctionCall.name", func(r *detourv1.CompleteRequest) {
		tc := toolCall()
		tc.Function.Name = "get_time"
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{tc}})
	}},
	{"tool call arguments", "FunctionCall.arguments", func(r *detourv1.CompleteRequest) {
		tc := toolCall()
		tc.Function.Arguments = `{"city":"Lyon"}`
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{tc}})
	}},
	{"prefix", "prefix", func(r *detourv1.CompleteRequest) {
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", Content: "The answer is", Prefix: true})
	}},
	{"tool_call_id", "tool_call_id", func(r *detourv1.CompleteRequest) {
		r.Messages = append(r.Messages, &detourv1.Message{Role: "tool", Content: "22C", ToolCallId: "call_1"})
	}},
	{"tools", "tools", func(r *detourv1.CompleteRequest) { r.Tools = []*detourv1.Tool{tool()} }},
	{"tool type", "Tool.type", func(r *detourv1.CompleteRequest) {
		t := tool()
		t.Type = "custom"
		r.Tools = []*detourv1.Tool{t}
	}},
	{"tool name", "FunctionDefinition.name", func(r *detourv1.CompleteRequest) {
		t := tool()
		t.Function.Name = "get_time"
		r.Tools = []*detourv1.Tool{t}
	}},
	{"tool description", "FunctionDefinition.description", func(r *detourv1.CompleteRequest) {
		t := tool()
		t.Function.Description = "Weather now."
		r.Tools = []*detourv1.Tool{t}
	}},
	{"tool parameters", "FunctionDefinition.parameters", func(r *detourv1.CompleteRequest) {
		t := tool()
		t.Function.Parameters = `{"type":"object","properties":{"town":{"type":"string"}}}`
		r.Tools = []*detourv1.Tool{t}
	}},
	{"tool strict", "FunctionDefinition.strict", func(r *detourv1.CompleteRequest) {
		t := tool()
		t.Function.Strict = ptr(true)
		r.Tools = []*detourv1.Tool{t}
	}},
	{"tool_choice", "tool_choice", func(r *detourv1.CompleteRequest) {
		r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "auto"}}
	}},
	{"tool call without function", "ToolCall.function", func(r *detourv1.CompleteRequest) {
		tc := toolCall()
		tc.Function = &detourv1.FunctionCall{Name: "get_weather"}
		r.Messages = append(r.Messages, &detourv1.Message{Role: "assistant", ToolCalls: []*detourv1.ToolCall{tc}})
	}},
	{"tool function", "Tool.function", func(r *detourv1.CompleteRequest) {
		r.Tools = []*detourv1.Tool{{Type: "function", Function: &detourv1.FunctionDefinition{Name: "ping"}}}
	}},
	{"tool_choice mode", "ToolChoice.mode", func(r *detourv1.CompleteRequest) {
		r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: "required"}}
	}},
	{"tool_choice function", "ToolChoice.function", func(r *detourv1.CompleteRequest) {
		r.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Function{Function: "required"}}
	}},
	{"parallel_tool_calls", "parallel_tool_calls", func(r *detourv1.CompleteRequest) { r.ParallelToolCalls = ptr(false) }},
	{"response_format", "ResponseFormat.type", func(r *detourv1.CompleteRequest) {
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_object"}
	}},
	{"response_format text", "response_format", func(r *detourv1.CompleteRequest) {
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "text"}
	}},
	{"json_schema", "ResponseFormat.json_schema", func(r *detourv1.CompleteRequest) {
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: jsonSchema()}
	}},
	{"json_schema name", "JsonSchema.name", func(r *detourv1.CompleteRequest) {
		js := jsonSchema()
		js.Name = "other"
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: js}
	}},
	{"json_schema description", "JsonSchema.description", func(r *detourv1.CompleteRequest) {
		js := jsonSchema()
		js.Description = "A verdict."
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: js}
	}},
	{"json_schema schema", "JsonSchema.schema", func(r *detourv1.CompleteRequest) {
		js := jsonSchema()
		js.Schema = `{"type":"object","properties":{"verdict":{"type":"integer"}}}`
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: js}
	}},
	{"json_schema strict", "JsonSchema.strict", func(r *detourv1.CompleteRequest) {
		js := jsonSchema()
		js.Strict = ptr(true)
		r.ResponseFormat = &detourv1.ResponseFormat{Type: "json_schema", JsonSchema: js}
	}},
	{"thinking", "Thinking.type", func(r *detourv1.CompleteRequest) { r.Thinking = &detourv1.Thinking{Type: "enabled"} }},
	{"thinking disabled", "thinking", func(r *detourv1.CompleteRequest) { r.Thinking = &detourv1.Thinking{Type: "disabled"} }},
	{"reasoning_effort", "reasoning_effort", func(r *detourv1.CompleteRequest) { r.ReasoningEffort = "high" }},
	{"frequency_penalty", "frequency_penalty", func(r *detourv1.CompleteRequest) { r.FrequencyPenalty = ptr(0.5) }},
	{"frequency_penalty zero", "frequency_penalty", func(r *detourv1.CompleteRequest) { r.FrequencyPenalty = ptr(0.0) }},
	{"presence_penalty", "presence_penalty", func(r *detourv1.CompleteRequest) { r.PresencePenalty = ptr(0.5) }},
	{"seed", "seed", func(r *detourv1.CompleteRequest) { r.Seed = ptr(int64(42)) }},
	{"seed zero", "seed", func(r *detourv1.CompleteRequest) { r.Seed = ptr(int64(0)) }},
	{"logprobs", "logprobs", func(r *detourv1.CompleteRequest) { r.Logprobs = true }},
	{"top_logprobs", "top_logprobs", func(r *detourv1.CompleteRequest) { r.Logprobs, r.TopLogprobs = true, ptr(int32(3)) }},
	{"max_completion_tokens", "max_completion_tokens", func(r *detourv1.CompleteRequest) { r.MaxCompletionTokens = 64 }},
	{"extra_body", "extra_body", func(r *detourv1.CompleteRequest) { r.ExtraBody = `{"top_k":40}` }},
}

func toolCall() *detourv1.ToolCall {
	return &detourv1.ToolCall{Id: "call_1", Type: "function",
		Function: &detourv1.FunctionCall{Name: "get_weather", Arguments: `{"city":"Paris"}`}}
}

func tool() *detourv1.Tool {
	return &detourv1.Tool{Type: "function", Function: &detourv1.FunctionDefinition{
		Name: "get_weather", Parameters: `{"type":"object","properties":{"city":{"type":"string"}}}`}}
}

func jsonSchema() *detourv1.JsonSchema {
	return &detourv1.JsonSchema{Name: "verdict", Schema: `{"type":"object","properties":{"verdict":{"type":"string"}}}`}
}

func TestKeyOfDiffers(t *testing.T) {
	base := KeyOf(baseRequest(), "", false)
	seen := map[Key]string{}
	for _, tt := range keyChanges {
		t.Run(tt.name, func(t *testing.T) {
			r := baseRequest()
			tt.change(r)
			got := KeyOf(r, "", false)
			if got == base {
				t.Errorf("KeyOf did not change")
			}
			if other, ok := seen[got]; ok {
				t.Errorf("same key as %q", other)
			}
			seen[got] = tt.name
		})
	}
	t.Run("user with PerUser", func(t *testing.T) {
		r := baseRequest()
		r.User = "u-2"
		if KeyOf(r, "", true) == KeyOf(baseRequest(), "", true) {
			t.Error("KeyOf(perUser) ignores user")
		}
	})
}

// Every field of the request is either in the key (and tested above) or
// deliberately left out. A field added to the proto fails this test until
// someone decides which.
func TestKeyOfCoversEveryField(t *testing.T) {
	excluded := map[string]bool{"routing": true, "cache": true, "user": true}
	tested := map[string]bool{}
	for _, c := range keyChanges {
		tested[c.field] = true
	}
	// Fields of CompleteRequest and Message are named alone, those of the
	// messages they hold as "Message.field".
	check := func(md protoreflect.MessageDescriptor, qualify bool) {
		fs := md.Fields()
		for i := range fs.Len() {
			name := string(fs.Get(i).Name())
			if qualify {
				name = string(md.Name()) + "." + name
			}
			if !excluded[name] && !tested[name] {
				t.Errorf("%s.%s is neither in the key (with a test in keyChanges) nor excluded", md.FullName(), fs.Get(i).Name())
			}
		}
	}
	check((&detourv1.CompleteRequest{}).ProtoReflect().Descriptor(), false)
	check((&detourv1.Message{}).ProtoReflect().Descriptor(), false)
	for _, m := range []proto.Message{&detourv1.ToolCall{}, &detourv1.FunctionCall{}, &detourv1.Tool{},
		&detourv1.FunctionDefinition{}, &detourv1.ToolChoice{}, &detourv1.ResponseFormat{}, &detourv1.JsonSchema{},
		&detourv1.Thinking{}} {
		check(m.ProtoReflect().Descriptor(), true)
	}
}

// JSON texts count without their insignificant whitespace, with the order of
// their members.
func TestKeyOfJSONText(t *testing.T) {
	with := func(params string) *detourv1.CompleteRequest {
		r := baseRequest()
		tl := tool()
		tl.Function.Parameters = params
		r.Tools = []*detourv1.Tool{tl}
		return r
	}
	compact := KeyOf(with(`{"type":"object","properties":{"a":{},"b":{}}}`), "", false)
	if got := KeyOf(with("{ \"type\": \"object\",\n  \"properties\": {\"a\": {}, \"b\": {}} }"), "", false); got != compact {
		t.Error("whitespace in tool parameters changed the key")
	}
	if got := KeyOf(with(`{"type":"object","properties":{"b":{},"a":{}}}`), "", false); got == compact {
		t.Error("the order of the properties did not change the key")
	}
}

// JSON field order and formatting do not reach the key.
func TestKeyOfJSON(t *testing.T) {
	docs := []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"maxTokens":5}`,
		`{
		  "maxTokens": 5,
		  "temperature": 0.0,
		  "messages": [ { "content": "hi", "role": "user" } ],
		  "model": "m"
		}`,
	}
	var keys []Key
	for _, d := range docs {
		r := &detourv1.CompleteRequest{}
		if err := protojson.Unmarshal([]byte(d), r); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, KeyOf(r, "", false))
	}
	if keys[0] != keys[1] {
		t.Errorf("keys differ: %v, %v", keys[0], keys[1])
	}
}

func TestKeyOfDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	r := baseRequest() // its stop sequences are sorted: nothing to copy
	if n := testing.AllocsPerRun(100, func() { KeyOf(r, "", false) }); n != 0 {
		t.Errorf("KeyOf allocates %v times, want 0", n)
	}
}
