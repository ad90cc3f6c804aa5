package cache

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
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
	check := func(md protoreflect.MessageDescriptor, skip string) {
		fs := md.Fields()
		for i := range fs.Len() {
			name := string(fs.Get(i).Name())
			if name != skip && !excluded[name] && !tested[name] {
				t.Errorf("%s.%s is neither in the key (with a test in keyChanges) nor excluded", md.FullName(), name)
			}
		}
	}
	check((&detourv1.CompleteRequest{}).ProtoReflect().Descriptor(), "")
	check((&detourv1.Message{}).ProtoReflect().Descriptor(), "")
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
