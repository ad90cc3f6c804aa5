package fakellm_test

import (
	"encoding/json"
	"flag"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-dev/detour/internal/fakellm"
)

func TestSettingsValidate(t *testing.T) {
	tests := []struct {
		name    string
		s       fakellm.Settings
		wantErr []string // substrings, one per problem
	}{
		{name: "zero", s: fakellm.Settings{}},
		{name: "all set", s: fakellm.Settings{Latency: time.Second, Jitter: 2 * time.Second, BusyRate: 1, QPS: 0.5, Burst: 3,
			HangRate: 0.1, TokensPerSec: 30, GarbageRate: 0.2, CutRate: 0.3}},
		{name: "negative durations", s: fakellm.Settings{Latency: -1, Jitter: -1}, wantErr: []string{"latency", "jitter"}},
		{name: "rates", s: fakellm.Settings{BusyRate: 1.1, HangRate: -0.1, GarbageRate: math.NaN(), CutRate: 2},
			wantErr: []string{"busy rate", "hang rate", "garbage rate", "cut rate"}},
		{name: "qps", s: fakellm.Settings{QPS: math.Inf(1)}, wantErr: []string{"qps"}},
		{name: "burst", s: fakellm.Settings{Burst: -1}, wantErr: []string{"burst"}},
		{name: "load-dependent busy", s: fakellm.Settings{Capacity: -1, MaxConcurrency: -1}, wantErr: []string{"capacity", "max concurrency"}},
		{name: "tokens", s: fakellm.Settings{TokensPerSec: -5}, wantErr: []string{"tokens per second"}},
		{name: "thinking, JSON, queue, balance", s: fakellm.Settings{ThinkTokens: -1, ThinkInterval: -1, JSONBlankRate: 1.5,
			QueueDelay: -1, KeepAliveInterval: -1, ExhaustedRate: -0.5},
			wantErr: []string{"json blank rate", "exhausted rate", "think tokens", "think interval", "queue delay", "keep-alive interval"}},
		{name: "streams", s: fakellm.Settings{TTFT: -1, TTFTSigma: 5, TTFTTailRate: 2, TTFTTail: -1, BreakRate: -1, BreakClean: math.NaN(), AnswerTokens: -1},
			wantErr: []string{"ttft tail rate", "break rate", "break clean", "ttft median", "ttft tail scale", "ttft sigma", "answer tokens"}},
		{name: "streams set", s: fakellm.Settings{TTFT: time.Second, TTFTSigma: 0.5, TTFTTailRate: 0.1, TTFTTail: time.Second,
			BreakRate: 0.3, BreakClean: 0.5, PrefixCompletion: true, AnswerTokens: 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate()
			var got []string
			if err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					for _, w := range tt.wantErr {
						if strings.HasPrefix(line, w) {
							got = append(got, w)
						}
					}
				}
				if len(got) != len(strings.Split(err.Error(), "\n")) {
					t.Errorf("Validate() = %v, want one line per problem %q", err, tt.wantErr)
				}
			}
			if diff := cmp.Diff(got, tt.wantErr); diff != "" {
				t.Errorf("Validate() = %v; problems (-got +want):\n%s", err, diff)
			}
		})
	}
}

func TestSettingsJSON(t *testing.T) {
	s := fakellm.Settings{Latency: 150 * time.Millisecond, Jitter: time.Second, BusyRate: 0.5, QPS: 1000, Burst: 7,
		Capacity: 300, MaxConcurrency: 20, HangRate: 0.01, TokensPerSec: 40, GarbageRate: 0.02, CutRate: 0.03,
		TTFT: 40 * time.Millisecond, TTFTSigma: 0.5, TTFTTailRate: 0.1, TTFTTail: 300 * time.Millisecond,
		BreakRate: 0.3, BreakClean: 0.5, PrefixCompletion: true, AnswerTokens: 200}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"latency":"150ms","jitter":"1s","busy_rate":0.5,"qps":1000,"burst":7,"capacity":300,"max_concurrency":20,"hang_rate":0.01,"tokens_per_sec":40,"garbage_rate":0.02,"cut_rate":0.03,"think_tokens":0,"think_interval":"0s","json_blank_rate":0,"queue_delay":"0s","keep_alive_interval":"0s","exhausted_rate":0,` +
		`"ttft":"40ms","ttft_sigma":0.5,"ttft_tail_rate":0.1,"ttft_tail":"300ms","break_rate":0.3,"break_clean":0.5,"prefix_completion":true,"answer_tokens":200}`
	if diff := cmp.Diff(string(b), want); diff != "" {
		t.Errorf("Marshal (-got +want):\n%s", diff)
	}
	var back fakellm.Settings
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(back, s); diff != "" {
		t.Errorf("round trip (-got +want):\n%s", diff)
	}

	// Unmarshal changes only the fields present, and nothing on error.
	patched := s
	if err := json.Unmarshal([]byte(`{"busy_rate":0,"latency":"1ms"}`), &patched); err != nil {
		t.Fatal(err)
	}
	wantPatched := s
	wantPatched.BusyRate, wantPatched.Latency = 0, time.Millisecond
	if diff := cmp.Diff(patched, wantPatched); diff != "" {
		t.Errorf("patch (-got +want):\n%s", diff)
	}
	unchanged := s
	if err := json.Unmarshal([]byte(`{"busy_rate":0,"jitter":"x"}`), &unchanged); err == nil {
		t.Error("Unmarshal accepted jitter \"x\"")
	}
	if diff := cmp.Diff(unchanged, s); diff != "" {
		t.Errorf("after a failed Unmarshal (-got +want):\n%s", diff)
	}
}

func TestRegisterFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    fakellm.Config
		wantErr bool // parse error
		invalid bool // Validate error
	}{
		{name: "none", args: nil, want: fakellm.Config{}},
		{
			name: "all",
			args: []string{"--name", "n1", "--region", "eu", "--models", "a,b", "--latency", "20ms", "--jitter", "5ms",
				"--busy-rate", "0.5", "--qps", "1000", "--burst", "10", "--capacity", "300", "--max-concurrency", "20",
				"--hang-rate", "0.01", "--tokens-per-sec", "50", "--garbage-rate", "0.02", "--cut-rate", "0.03",
				"--think-tokens", "40", "--think-interval", "10ms", "--json-blank-rate", "0.1", "--queue-delay", "2m",
				"--keep-alive-interval", "5s", "--exhausted-rate", "0.2", "--ttft", "40ms", "--ttft-sigma", "0.5",
				"--ttft-tail-rate", "0.1", "--ttft-tail", "300ms", "--break-rate", "0.3", "--break-clean", "0.5",
				"--prefix-completion", "--answer-tokens", "200"},
			want: fakellm.Config{Name: "n1", Region: "eu", Models: []string{"a", "b"}, Settings: fakellm.Settings{
				Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, BusyRate: 0.5, QPS: 1000, Burst: 10,
				Capacity: 300, MaxConcurrency: 20, HangRate: 0.01, TokensPerSec: 50, GarbageRate: 0.02, CutRate: 0.03,
				ThinkTokens: 40, ThinkInterval: 10 * time.Millisecond, JSONBlankRate: 0.1, QueueDelay: 2 * time.Minute,
				KeepAliveInterval: 5 * time.Second, ExhaustedRate: 0.2, TTFT: 40 * time.Millisecond, TTFTSigma: 0.5,
				TTFTTailRate: 0.1, TTFTTail: 300 * time.Millisecond, BreakRate: 0.3, BreakClean: 0.5, PrefixCompletion: true,
				AnswerTokens: 200}},
		},
		{name: "bad duration", args: []string{"--latency", "soon"}, wantErr: true},
		{name: "bad number", args: []string{"--qps", "many"}, wantErr: true},
		{name: "rate out of range", args: []string{"--busy-rate", "50"}, invalid: true,
			want: fakellm.Config{Settings: fakellm.Settings{BusyRate: 50}}},
		{name: "empty model", args: []string{"--models", "a,"}, invalid: true,
			want: fakellm.Config{Models: []string{"a", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got fakellm.Config
			fs := flag.NewFlagSet("fakellm", flag.ContinueOnError)
			fs.SetOutput(new(strings.Builder))
			got.RegisterFlags(fs)
			err := fs.Parse(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) = %v, want error: %v", tt.args, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("config (-got +want):\n%s", diff)
			}
			if err := got.Validate(); (err != nil) != tt.invalid {
				t.Errorf("Validate() = %v, want error: %v", err, tt.invalid)
			}
		})
	}
}
