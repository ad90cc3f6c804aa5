package excerpt

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func TestClip(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{name: "short", in: "deepseek-chat", n: 32, want: "deepseek-chat"},
		{name: "exact", in: "abcd", n: 4, want: "abcd"},
		{name: "long", in: "abcdef", n: 4, want: "abcd…[clipped 6 bytes]"},
		{name: "cut on a rune boundary", in: "ééé", n: 5, want: "éé…[clipped 6 bytes]"},
		{name: "invalid UTF-8 replaced", in: "a\xffb", n: 10, want: "a\ufffdb"},
		{name: "invalid UTF-8 counted as its replacement", in: "ab\xff\xff", n: 5, want: "ab\ufffd…[clipped 4 bytes]"},
		{name: "zero", in: "abc", n: 0, want: "…[clipped 3 bytes]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Clip(tt.in, tt.n)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Clip(%q, %d) (-got +want):\n%s", tt.in, tt.n, diff)
			}
			if !utf8.ValidString(got) || len(got) > tt.n+markRoom {
				t.Errorf("Clip(%q, %d) = %q: invalid UTF-8 or over %d bytes", tt.in, tt.n, got, tt.n+markRoom)
			}
		})
	}
}

func TestScrub(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "prose", in: "The model is overloaded, try again later.", want: "The model is overloaded, try again later."},
		{name: "model names", in: "model deepseek-chat and meta-llama/Llama-3.1-70B-Instruct", want: "model deepseek-chat and meta-llama/Llama-3.1-70B-Instruct"},
		{name: "bearer", in: "header Authorization: Bearer abc.DEF-123 was refused", want: "header Authorization: Bearer [redacted] was refused"},
		{name: "masked key", in: "Incorrect API key provided: sk-proj-****************abcd. You can find", want: "Incorrect API key provided: [redacted]. You can find"},
		{name: "whole key", in: "key sk-0123456789abcdef0123456789abcdef is invalid", want: "key [redacted] is invalid"},
		{name: "pair", in: `{"api_key": "k3y-v4lue", "x": 1}`, want: `{"api_key": "[redacted]", "x": 1}`},
		{name: "query", in: "GET /v1?token=abcdef123&x=1", want: "GET /v1?token=[redacted]&x=1"},
		{name: "long token", in: "id eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 end", want: "id [redacted] end"},
		{name: "long word without digits", in: "Pneumonoultramicroscopicsilicovolcanoconiosis", want: "Pneumonoultramicroscopicsilicovolcanoconiosis"},
		{name: "long model name", in: "Qwen/Qwen2-72B-Instruct-GPTQ-Int4-AWQ-Chat", want: "Qwen/Qwen2-72B-Instruct-GPTQ-Int4-AWQ-Chat"},
		{name: "hex key", in: "key 0123456789abcdef0123456789abcdef rejected", want: "key [redacted] rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(Scrub(tt.in), tt.want); diff != "" {
				t.Errorf("Scrub(%q) (-got +want):\n%s", tt.in, diff)
			}
		})
	}
}

func TestOfIsBounded(t *testing.T) {
	huge := strings.Repeat("x", 10<<20)
	got := Of(huge, Max)
	if len(got) > Max+markRoom || !strings.HasSuffix(got, "…[clipped 10485760 bytes]") {
		t.Errorf("Of(10 MiB) = %d bytes ending %q, want <= %d ending with the clip mark", len(got), got[max(0, len(got)-40):], Max+markRoom)
	}
	// A key that straddles the cut is gone, not half kept.
	in := strings.Repeat("a ", 120) + "sk-0123456789abcdef0123456789abcdef"
	if got := Of(in, Max); strings.Contains(got, "sk-01") {
		t.Errorf("Of kept part of a key: %q", got)
	}
}

func TestLine(t *testing.T) {
	tests := []struct {
		name, in string
		n        int
		want     string
	}{
		{name: "clean", in: "Server busy", n: 64, want: "Server busy"},
		{name: "collapsed", in: "  a\n\tb \x00 c\xff d  ", n: 64, want: "a b c d"},
		{name: "scrubbed", in: "bad key\nBearer abcdef1234", n: 64, want: "bad key Bearer [redacted]"},
		{name: "clipped", in: strings.Repeat("é", 300), n: 10, want: "ééééé…[clipped 600 bytes]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(Line(tt.in, tt.n), tt.want); diff != "" {
				t.Errorf("Line(%q, %d) (-got +want):\n%s", tt.in, tt.n, diff)
			}
		})
	}
}
