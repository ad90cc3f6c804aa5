package fakellm_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
)

const helloBody = `{"model":"deepseek-chat","messages":[{"role":"user","content":"Hello there, how are you?"}]}`

func TestChatUnary(t *testing.T) {
	tests := []struct {
		name string
		body string
		want completion // Created is checked apart, then zeroed
	}{
		{
			name: "one user message",
			body: helloBody,
			want: wantCompletion("deepseek-chat", "[eu-west] echo: Hello there, how are you? (ref 72d73986)", "stop", usage{14, 9, 23}),
		},
		{
			name: "conversation echoes the last user message",
			body: `{"model":"deepseek-chat","messages":[
				{"role":"system","content":"You are terse."},
				{"role":"user","content":"first question"},
				{"role":"assistant","content":"first answer"},
				{"role":"user","content":"second\tquestion \"quoted\""}]}`,
			want: wantCompletion("deepseek-chat", `[eu-west] echo: second question "quoted" (ref b36ca1bc)`, "stop", usage{36, 7, 43}),
		},
		{
			name: "content parts",
			body: `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"part one"},{"type":"image_url"},{"type":"text","text":"part two"}]}]}`,
			want: wantCompletion("m", "[eu-west] echo: part one part two (ref 27d85a74)", "stop", usage{12, 8, 20}),
		},
		{
			name: "max_tokens truncates",
			body: `{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"Hello there, how are you?"}]}`,
			want: wantCompletion("m", "[eu-west] echo: Hello", "length", usage{14, 3, 17}),
		},
		{
			name: "long prompt is cut at 24 words",
			body: `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("w ", 30) + `"}]}`,
			want: wantCompletion("m", "[eu-west] echo:"+strings.Repeat(" w", 24)+" ... (ref 15028f52)", "stop", usage{22, 29, 51}),
		},
	}
	f := start(t, fakellm.Config{Region: "eu-west"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.chat(t, tt.body)
			if r.code != http.StatusOK {
				t.Fatalf("status %d, want 200; body %s", r.code, r.body)
			}
			if diff := cmp.Diff(r.header.Get("Content-Type"), "application/json"); diff != "" {
				t.Errorf("Content-Type (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(r.header.Get("X-Fakellm-Region"), "eu-west"); diff != "" {
				t.Errorf("X-Fakellm-Region (-got +want):\n%s", diff)
			}
			var got completion
			if err := json.Unmarshal(r.body, &got); err != nil {
				t.Fatalf("decoding %s: %v", r.body, err)
			}
			if d := time.Since(time.Unix(got.Created, 0)); d < -time.Minute || d > time.Minute {
				t.Errorf("created = %d, want about now", got.Created)
			}
			got.Created = 0
			if !strings.HasPrefix(got.ID, "chatcmpl-") {
				t.Errorf("id = %q, want chatcmpl-...", got.ID)
			}
			got.ID = ""
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("answer (-got +want):\n%s", diff)
			}
		})
	}
}

func wantCompletion(model, content, finish string, u usage) completion {
	c := completion{Object: "chat.completion", Model: model, Usage: u}
	c.Choices = append(c.Choices, struct {
		Index        int     `json:"index"`
		Message      message `json:"message"`
		FinishReason string  `json:"finish_reason"`
	}{Message: message{Role: "assistant", Content: content}, FinishReason: finish})
	return c
}

func TestChatDeterministic(t *testing.T) {
	a := start(t, fakellm.Config{Region: "r1"})
	b := start(t, fakellm.Config{Region: "r1", Name: "another"})
	other := `{"model":"deepseek-chat","messages":[{"role":"user","content":"Something else"}]}`

	decode := func(r reply) completion {
		t.Helper()
		var c completion
		if err := json.Unmarshal(r.body, &c); err != nil {
			t.Fatalf("decoding %s: %v", r.body, err)
		}
		c.Created = 0
		return c
	}
	first := decode(a.chat(t, helloBody))
	for _, f := range []*fixture{a, a, b} {
		if diff := cmp.Diff(decode(f.chat(t, helloBody)), first); diff != "" {
			t.Errorf("same messages, another answer (-got +want):\n%s", diff)
		}
	}
	if got := decode(a.chat(t, other)); got.ID == first.ID || got.Choices[0].Message.Content == first.Choices[0].Message.Content {
		t.Errorf("other messages got the same answer %+v", got)
	}
}

func TestChatStream(t *testing.T) {
	tests := []struct {
		name string
		req  string
	}{
		{"plain", `{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"Hello there, how are you?"}]}`},
		{"max_tokens", `{"model":"deepseek-chat","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"Hello there, how are you?"}]}`},
	}
	f := start(t, fakellm.Config{Region: "eu-west"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var unary completion
			if err := json.Unmarshal(f.chat(t, strings.Replace(tt.req, `"stream":true,`, "", 1)).body, &unary); err != nil {
				t.Fatal(err)
			}

			r := f.chat(t, tt.req)
			if r.code != http.StatusOK || r.err != nil {
				t.Fatalf("status %d, read error %v, want 200", r.code, r.err)
			}
			if diff := cmp.Diff(r.header.Get("Content-Type"), "text/event-stream"); diff != "" {
				t.Errorf("Content-Type (-got +want):\n%s", diff)
			}
			events := sseEvents(t, r.body)
			if len(events) < 5 {
				t.Fatalf("got %d events, want a role chunk, several content chunks, a final chunk and [DONE]:\n%s", len(events), r.body)
			}
			if events[len(events)-1] != "[DONE]" {
				t.Errorf("last event %q, want [DONE]", events[len(events)-1])
			}
			chunks := make([]streamChunk, len(events)-1)
			for i, e := range events[:len(events)-1] {
				if err := json.Unmarshal([]byte(e), &chunks[i]); err != nil {
					t.Fatalf("event %d %q: %v", i, e, err)
				}
				c := chunks[i]
				if c.ID != unary.ID || c.Object != "chat.completion.chunk" || c.Model != unary.Model || len(c.Choices) != 1 {
					t.Errorf("event %d = %+v, want id %s, object chat.completion.chunk, model %s, one choice", i, c, unary.ID, unary.Model)
				}
			}
			if got := chunks[0].Choices[0].Delta; got != (message{Role: "assistant"}) {
				t.Errorf("first delta = %+v, want the role alone", got)
			}
			var content strings.Builder
			for i, c := range chunks[1 : len(chunks)-1] {
				content.WriteString(c.Choices[0].Delta.Content)
				if c.Choices[0].FinishReason != nil || c.Usage != nil {
					t.Errorf("content chunk %d has a finish reason or usage", i)
				}
			}
			if got, want := len(chunks)-2, unary.Usage.CompletionTokens; got != want {
				t.Errorf("%d content chunks, want one per completion token: %d", got, want)
			}
			if diff := cmp.Diff(content.String(), unary.Choices[0].Message.Content); diff != "" {
				t.Errorf("streamed content (-got +want):\n%s", diff)
			}
			last := chunks[len(chunks)-1]
			if last.Choices[0].FinishReason == nil || *last.Choices[0].FinishReason != unary.Choices[0].FinishReason {
				t.Errorf("last finish_reason = %v, want %q", last.Choices[0].FinishReason, unary.Choices[0].FinishReason)
			}
			if last.Usage == nil || *last.Usage != unary.Usage {
				t.Errorf("last usage = %+v, want %+v", last.Usage, unary.Usage)
			}
		})
	}
}

func TestChatBadRequest(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantParam string // "" for null
	}{
		{"not JSON", `{"model":`, ""},
		{"missing model", `{"messages":[{"role":"user","content":"hi"}]}`, "model"},
		{"no messages", `{"model":"m","messages":[]}`, "messages"},
		{"bad role", `{"model":"m","messages":[{"role":"robot","content":"hi"}]}`, "messages[0].role"},
		{"bad content", `{"model":"m","messages":[{"role":"user","content":5}]}`, ""},
		{"temperature", `{"model":"m","temperature":3,"messages":[{"role":"user","content":"hi"}]}`, "temperature"},
		{"top_p", `{"model":"m","top_p":-1,"messages":[{"role":"user","content":"hi"}]}`, "top_p"},
		{"max_tokens", `{"model":"m","max_tokens":-1,"messages":[{"role":"user","content":"hi"}]}`, "max_tokens"},
	}
	// Invalid requests are refused whatever the knobs say.
	f := start(t, fakellm.Config{Settings: fakellm.Settings{BusyRate: 1}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.chat(t, tt.body)
			if r.code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %s", r.code, r.body)
			}
			var e apiError
			if err := json.Unmarshal(r.body, &e); err != nil {
				t.Fatalf("decoding %s: %v", r.body, err)
			}
			param := ""
			if e.Error.Param != nil {
				param = *e.Error.Param
			}
			if e.Error.Type != "invalid_request_error" || e.Error.Message == "" || param != tt.wantParam {
				t.Errorf("error = %s, want type invalid_request_error, a message and param %q", r.body, tt.wantParam)
			}
		})
	}
	if got, want := f.srv.Stats().BadRequest, uint64(len(tests)); got != want {
		t.Errorf("Stats().BadRequest = %d, want %d", got, want)
	}
}

func TestChatBusy(t *testing.T) {
	f := start(t, fakellm.Config{Settings: fakellm.Settings{BusyRate: 1}})
	for _, body := range []string{helloBody, strings.Replace(helloBody, `{`, `{"stream":true,`, 1)} {
		r := f.chat(t, body)
		if r.code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503", r.code)
		}
		var e apiError
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Fatalf("decoding %s: %v", r.body, err)
		}
		if e.Error.Message != "Server busy, please retry later" || e.Error.Type != "server_busy" {
			t.Errorf("body %s, want the DeepSeek busy error", r.body)
		}
	}
	if diff := cmp.Diff(settled(t, f.srv), fakellm.Stats{Total: 2, Busy: 2}); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

func TestChatRateLimited(t *testing.T) {
	f := start(t, fakellm.Config{Settings: fakellm.Settings{QPS: 0.5}}) // burst 1
	if r := f.chat(t, helloBody); r.code != http.StatusOK {
		t.Fatalf("first request: status %d, want 200", r.code)
	}
	for range 3 {
		r := f.chat(t, helloBody)
		if r.code != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 429", r.code)
		}
		if got := r.header.Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After = %q, want 1", got)
		}
		var e apiError
		if err := json.Unmarshal(r.body, &e); err != nil {
			t.Fatalf("decoding %s: %v", r.body, err)
		}
		if e.Error.Code != "rate_limit_exceeded" {
			t.Errorf("body %s, want code rate_limit_exceeded", r.body)
		}
	}
	if diff := cmp.Diff(settled(t, f.srv), fakellm.Stats{Total: 4, OK: 1, RateLimited: 3}); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

// TestChatMaxConcurrency: with max_concurrency 2, a request that arrives
// while two are in flight is answered 503 server busy at once; once one
// ends, the next is served again.
func TestChatMaxConcurrency(t *testing.T) {
	f := start(t, fakellm.Config{Settings: fakellm.Settings{MaxConcurrency: 2, HangRate: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.base+"/v1/chat/completions", strings.NewReader(helloBody))
			if resp, err := f.http.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	waitFor(t, "two requests in flight", func() bool { return f.srv.Stats().InFlight == 2 })
	r := f.chat(t, helloBody)
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("third request: status %d, want 503", r.code)
	}
	var e apiError
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Type != "server_busy" {
		t.Errorf("body %s, want the DeepSeek busy error", r.body)
	}
	cancel()
	<-done
	<-done
	waitFor(t, "the hanging requests to end", func() bool { return f.srv.Stats().InFlight == 0 })
	if err := f.srv.SetSettings(fakellm.Settings{MaxConcurrency: 2}); err != nil {
		t.Fatal(err)
	}
	if r := f.chat(t, helloBody); r.code != http.StatusOK {
		t.Errorf("with room again: status %d, want 200", r.code)
	}
	if got := settled(t, f.srv); got.Busy != 1 || got.OK != 1 {
		t.Errorf("Stats = %+v, want 1 busy and 1 ok", got)
	}
}

// TestChatCapacity: above its capacity (requests per second) the backend
// answers 503 server busy, not 429.
func TestChatCapacity(t *testing.T) {
	f := start(t, fakellm.Config{Settings: fakellm.Settings{Capacity: 0.5}}) // burst 1
	if r := f.chat(t, helloBody); r.code != http.StatusOK {
		t.Fatalf("first request: status %d, want 200", r.code)
	}
	for range 3 {
		r := f.chat(t, helloBody)
		if r.code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503", r.code)
		}
		if got := r.header.Get("Retry-After"); got != "" {
			t.Errorf("Retry-After = %q, want none", got)
		}
	}
	if diff := cmp.Diff(settled(t, f.srv), fakellm.Stats{Total: 4, OK: 1, Busy: 3}); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
}

func TestChatLatencyAndPacing(t *testing.T) {
	const latency = 30 * time.Millisecond
	f := start(t, fakellm.Config{Settings: fakellm.Settings{Latency: latency, TokensPerSec: 200}})
	begin := time.Now()
	r := f.chat(t, strings.Replace(helloBody, `{`, `{"stream":true,`, 1))
	elapsed := time.Since(begin)
	if r.code != http.StatusOK {
		t.Fatalf("status %d, want 200", r.code)
	}
	// 9 tokens: 8 pauses of 5 ms after the latency. Only lower bounds: an
	// upper bound would measure the machine.
	if want := latency + 8*5*time.Millisecond; elapsed < want {
		t.Errorf("stream took %v, want at least %v", elapsed, want)
	}
}

func TestChatFaults(t *testing.T) {
	stream := strings.Replace(helloBody, `{`, `{"stream":true,`, 1)
	tests := []struct {
		name     string
		settings fakellm.Settings
		body     string
		check    func(t *testing.T, r reply)
		want     fakellm.Stats
	}{
		{
			name:     "garbage unary",
			settings: fakellm.Settings{GarbageRate: 1},
			body:     helloBody,
			check: func(t *testing.T, r reply) {
				var c completion
				if r.code != http.StatusOK || r.err != nil || json.Unmarshal(r.body, &c) == nil {
					t.Errorf("status %d, read error %v, body %s; want 200 with a whole body of malformed JSON", r.code, r.err, r.body)
				}
			},
			want: fakellm.Stats{Total: 1, Garbage: 1},
		},
		{
			name:     "garbage stream",
			settings: fakellm.Settings{GarbageRate: 1},
			body:     stream,
			check: func(t *testing.T, r reply) {
				bad := 0
				for _, e := range sseEvents(t, r.body) {
					var c streamChunk
					if e != "[DONE]" && json.Unmarshal([]byte(e), &c) != nil {
						bad++
					}
				}
				if r.code != http.StatusOK || r.err != nil || bad != 1 || !strings.HasSuffix(string(r.body), "data: [DONE]\n\n") {
					t.Errorf("status %d, %d malformed events, want 200 and 1:\n%s", r.code, bad, r.body)
				}
			},
			want: fakellm.Stats{Total: 1, Garbage: 1},
		},
		{
			name:     "cut unary",
			settings: fakellm.Settings{CutRate: 1},
			body:     helloBody,
			check: func(t *testing.T, r reply) {
				if !errors.Is(r.err, io.ErrUnexpectedEOF) {
					t.Errorf("reading the body: %v, want unexpected EOF", r.err)
				}
			},
			want: fakellm.Stats{Total: 1, Cut: 1},
		},
		{
			name:     "cut stream",
			settings: fakellm.Settings{CutRate: 1},
			body:     stream,
			check: func(t *testing.T, r reply) {
				if r.err == nil || strings.Contains(string(r.body), "[DONE]") || !strings.Contains(string(r.body), `"content":" there,"`) {
					t.Errorf("read error %v, body:\n%s\nwant a few chunks, no [DONE], and an error", r.err, r.body)
				}
			},
			want: fakellm.Stats{Total: 1, Cut: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, fakellm.Config{Settings: tt.settings})
			tt.check(t, f.chat(t, tt.body))
			if diff := cmp.Diff(settled(t, f.srv), tt.want); diff != "" {
				t.Errorf("Stats (-got +want):\n%s", diff)
			}
		})
	}
}

func TestChatHangReleasedByClient(t *testing.T) {
	tests := []struct {
		name     string
		settings fakellm.Settings
		want     fakellm.Stats
	}{
		{"hang", fakellm.Settings{HangRate: 1}, fakellm.Stats{Total: 1, Hang: 1}},
		{"latency", fakellm.Settings{Latency: time.Hour}, fakellm.Stats{Total: 1, Canceled: 1}},
		{"pacing", fakellm.Settings{TokensPerSec: 0.001}, fakellm.Stats{Total: 1, Canceled: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, fakellm.Config{Settings: tt.settings})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.base+"/v1/chat/completions",
					strings.NewReader(strings.Replace(helloBody, `{`, `{"stream":true,`, 1)))
				resp, err := f.http.Do(req)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				done <- err
			}()
			waitFor(t, "the request to arrive", func() bool { return f.srv.Stats().Total == 1 })
			cancel()
			if err := <-done; err == nil {
				t.Error("canceled request succeeded")
			}
			if diff := cmp.Diff(settled(t, f.srv), tt.want); diff != "" {
				t.Errorf("Stats (-got +want):\n%s", diff)
			}
		})
	}
}

func TestCloseReleasesHangs(t *testing.T) {
	srv := fakellm.New(fakellm.Config{Settings: fakellm.Settings{HangRate: 1}})
	if err := srv.Start("127.0.0.1:0", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	f := &fixture{srv: srv, http: &http.Client{Transport: tr}, base: "http://" + srv.HTTPAddr()}
	router, closeConn := dialRouter(t, srv.GRPCAddr())
	defer closeConn()

	errs := make(chan error, 2)
	go func() {
		resp, err := f.http.Post(f.base+"/v1/chat/completions", "application/json", strings.NewReader(helloBody))
		if err == nil {
			resp.Body.Close()
		}
		errs <- err
	}()
	go func() {
		_, err := router.Complete(context.Background(), helloRequest())
		errs <- err
	}()
	waitFor(t, "both requests to hang", func() bool { return srv.Stats().Hang == 2 })
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for range 2 {
		if err := <-errs; err == nil {
			t.Error("a hanging request got an answer, want an error")
		}
	}
	if got := srv.Stats().InFlight; got != 0 {
		t.Errorf("InFlight = %d after Close, want 0", got)
	}
}

func TestControl(t *testing.T) {
	initial := fakellm.Settings{Latency: time.Millisecond, QPS: 100}
	steps := []struct {
		name     string
		method   string
		body     string
		wantCode int
		want     fakellm.Settings // the settings after the step
	}{
		{name: "get", method: http.MethodGet, wantCode: 200, want: initial},
		{
			name: "change some", method: http.MethodPost, body: `{"busy_rate":0.25,"latency":"20ms","jitter":"5ms"}`, wantCode: 200,
			want: fakellm.Settings{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, BusyRate: 0.25, QPS: 100},
		},
		{
			name: "change the others", method: http.MethodPost, wantCode: 200,
			body: `{"qps":0,"burst":3,"hang_rate":0.5,"tokens_per_sec":50,"garbage_rate":0.1,"cut_rate":0.2}`,
			want: fakellm.Settings{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, BusyRate: 0.25,
				Burst: 3, HangRate: 0.5, TokensPerSec: 50, GarbageRate: 0.1, CutRate: 0.2},
		},
	}
	current := steps[len(steps)-1].want
	for _, bad := range []struct{ name, body string }{
		{"rate above 1", `{"busy_rate":1.5}`},
		{"negative rate", `{"cut_rate":-0.1}`},
		{"negative latency", `{"latency":"-1s"}`},
		{"latency not a duration", `{"latency":"soon"}`},
		{"latency as a number", `{"latency":5}`},
		{"negative qps", `{"qps":-1}`},
		{"unknown field", `{"busy":1}`},
		{"valid and invalid together", `{"busy_rate":0.5,"hang_rate":2}`},
		{"not JSON", `busy_rate=1`},
		{"empty", ``},
	} {
		steps = append(steps, struct {
			name     string
			method   string
			body     string
			wantCode int
			want     fakellm.Settings
		}{name: bad.name, method: http.MethodPost, body: bad.body, wantCode: 400, want: current})
	}

	f := start(t, fakellm.Config{Settings: initial})
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r := f.do(t, context.Background(), st.method, "/control", st.body)
			if r.code != st.wantCode {
				t.Fatalf("status %d, want %d; body %s", r.code, st.wantCode, r.body)
			}
			if st.wantCode == http.StatusOK {
				var got fakellm.Settings
				if err := json.Unmarshal(r.body, &got); err != nil {
					t.Fatalf("decoding %s: %v", r.body, err)
				}
				if diff := cmp.Diff(got, st.want); diff != "" {
					t.Errorf("answered settings (-got +want):\n%s", diff)
				}
			} else {
				var e apiError
				if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Message == "" {
					t.Errorf("body %s, want an error message", r.body)
				}
			}
			if diff := cmp.Diff(f.srv.Settings(), st.want); diff != "" {
				t.Errorf("Settings() (-got +want):\n%s", diff)
			}
		})
	}
}

func TestControlAppliesToHTTPAndGRPC(t *testing.T) {
	f := start(t, fakellm.Config{})
	if r := f.chat(t, helloBody); r.code != http.StatusOK {
		t.Fatalf("before: status %d, want 200", r.code)
	}
	if r := f.do(t, context.Background(), http.MethodPost, "/control", `{"busy_rate":1}`); r.code != http.StatusOK {
		t.Fatalf("POST /control: status %d; body %s", r.code, r.body)
	}
	if r := f.chat(t, helloBody); r.code != http.StatusServiceUnavailable {
		t.Errorf("after: HTTP status %d, want 503", r.code)
	}
	if _, err := f.router.Complete(context.Background(), helloRequest()); status.Code(err) != codes.Unavailable {
		t.Errorf("after: gRPC error %v, want UNAVAILABLE", err)
	}
}

func TestStats(t *testing.T) {
	f := start(t, fakellm.Config{Name: "fake-1", Region: "eu-west"})
	ctx := context.Background()
	f.chat(t, helloBody)
	f.chat(t, `{}`)
	if _, err := f.router.Complete(ctx, helloRequest()); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.SetSettings(fakellm.Settings{BusyRate: 1}); err != nil {
		t.Fatal(err)
	}
	f.chat(t, helloBody)
	f.router.Complete(ctx, helloRequest())
	if err := f.srv.SetSettings(fakellm.Settings{QPS: 0.5}); err != nil {
		t.Fatal(err)
	}
	f.chat(t, helloBody)
	f.chat(t, helloBody)
	f.do(t, ctx, http.MethodGet, "/v1/models", "") // not counted

	want := fakellm.Stats{Total: 7, OK: 3, Busy: 2, RateLimited: 1, BadRequest: 1}
	if diff := cmp.Diff(settled(t, f.srv), want); diff != "" {
		t.Errorf("Stats (-got +want):\n%s", diff)
	}
	type body struct {
		Name   string `json:"name"`
		Region string `json:"region"`
		fakellm.Stats
	}
	for _, step := range []struct {
		method, path string
		want         body
	}{
		{http.MethodGet, "/stats", body{"fake-1", "eu-west", want}},
		{http.MethodPost, "/stats/reset", body{"fake-1", "eu-west", fakellm.Stats{}}},
		{http.MethodGet, "/stats", body{"fake-1", "eu-west", fakellm.Stats{}}},
	} {
		r := f.do(t, ctx, step.method, step.path, "")
		if r.code != http.StatusOK {
			t.Fatalf("%s %s: status %d", step.method, step.path, r.code)
		}
		var got body
		if err := json.Unmarshal(r.body, &got); err != nil {
			t.Fatalf("decoding %s: %v", r.body, err)
		}
		if diff := cmp.Diff(got, step.want); diff != "" {
			t.Errorf("%s %s (-got +want):\n%s", step.method, step.path, diff)
		}
	}
	// Every field is in the JSON under its documented name.
	r := f.do(t, ctx, http.MethodGet, "/stats", "")
	var fields map[string]any
	if err := json.Unmarshal(r.body, &fields); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range []string{"name", "region", "total", "ok", "busy", "rate_limited", "hang", "bad_request", "garbage", "cut", "broken", "canceled", "exhausted", "in_flight", "http_conns"} {
		if _, ok := fields[n]; ok {
			names = append(names, n)
		}
	}
	if len(names) != len(fields) || len(fields) != 15 {
		t.Errorf("/stats fields %v, want the 15 documented ones", fields)
	}
}
