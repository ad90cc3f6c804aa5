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
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// streamText streams req over gRPC and returns the deltas, whether the last
// chunk carried a finish reason, and the error the stream ended with (nil
// for a clean end).
func streamText(t *testing.T, f *fixture, req *detourv1.CompleteRequest) (deltas []string, finished bool, err error) {
	t.Helper()
	st, err := f.router.StreamComplete(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := recvAll(st)
	for _, c := range chunks {
		if c.GetDelta() != "" {
			deltas = append(deltas, c.GetDelta())
		}
		finished = c.GetFinishReason() != ""
	}
	return deltas, finished, err
}

func longRequest() *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{Model: "deepseek-chat", Messages: []*detourv1.Message{
		{Role: "system", Content: "be brief"},
		{Role: "user", Content: "tell me a long story about the sea"},
	}}
}

// withPrefix is req continued from prefix, as detour asks a backend with
// prefix_completion.
func withPrefix(req *detourv1.CompleteRequest, prefix string) *detourv1.CompleteRequest {
	msgs := append(append([]*detourv1.Message(nil), req.GetMessages()...), &detourv1.Message{Role: "assistant", Content: prefix, Prefix: true})
	return &detourv1.CompleteRequest{Model: req.GetModel(), Messages: msgs}
}

// AnswerTokens pads an answer to a fixed length, the same from every server
// of a region, so that a spliced answer can be compared with an unbroken
// one; max_tokens still truncates it.
func TestAnswerTokens(t *testing.T) {
	cfg := fakellm.Config{Name: "a", Region: "pool", Settings: fakellm.Settings{AnswerTokens: 60}}
	a := start(t, cfg)
	cfg.Name = "b"
	b := start(t, cfg)
	ctx := context.Background()
	ua, err := a.router.Complete(ctx, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	if n := ua.GetUsage().GetCompletionTokens(); n != 60 {
		t.Errorf("%d completion tokens, want 60", n)
	}
	if !strings.HasPrefix(ua.GetContent(), "[pool] echo: tell me a long story about the sea (ref ") {
		t.Errorf("content %q does not start with the echo", ua.GetContent())
	}
	deltas, finished, err := streamText(t, b, longRequest())
	if err != nil || !finished || len(deltas) != 60 {
		t.Fatalf("stream from b: %d deltas, finished %v, error %v; want 60, finished, nil", len(deltas), finished, err)
	}
	if diff := cmp.Diff(strings.Join(deltas, ""), ua.GetContent()); diff != "" {
		t.Errorf("b's stream differs from a's answer (-b +a):\n%s", diff)
	}
	other := longRequest()
	other.Messages[1].Content = "tell me a long story about the land"
	uo, err := a.router.Complete(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Fields(uo.GetContent())[20] == strings.Fields(ua.GetContent())[20] && strings.Fields(uo.GetContent())[21] == strings.Fields(ua.GetContent())[21] {
		t.Errorf("another prompt got the same filler words:\n%s\n%s", uo.GetContent(), ua.GetContent())
	}
	short := longRequest()
	short.MaxTokens = 10
	us, err := a.router.Complete(ctx, short)
	if err != nil {
		t.Fatal(err)
	}
	if us.GetUsage().GetCompletionTokens() != 10 || us.GetFinishReason() != "length" || !strings.HasPrefix(ua.GetContent(), us.GetContent()) {
		t.Errorf("max_tokens 10: %d tokens, finish %q, content %q; want 10, length, a prefix of the whole answer",
			us.GetUsage().GetCompletionTokens(), us.GetFinishReason(), us.GetContent())
	}
}

// With PrefixCompletion, a last assistant message with prefix is continued:
// prefix and answer put together are the unbroken answer, over gRPC and
// HTTP, whatever the split; the prompt counts the prefix.
func TestPrefixCompletion(t *testing.T) {
	f := start(t, fakellm.Config{Region: "pool", Settings: fakellm.Settings{AnswerTokens: 30, PrefixCompletion: true}})
	ctx := context.Background()
	whole, err := f.router.Complete(ctx, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	deltas, _, err := streamText(t, f, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{1, 7, 29, 30} {
		prefix := strings.Join(deltas[:k], "")
		got, finished, err := streamText(t, f, withPrefix(longRequest(), prefix))
		if err != nil || !finished {
			t.Fatalf("k=%d: stream ended with %v, finished %v", k, err, finished)
		}
		if len(got) != 30-k {
			t.Errorf("k=%d: %d deltas, want the %d left", k, len(got), 30-k)
		}
		if diff := cmp.Diff(prefix+strings.Join(got, ""), whole.GetContent()); diff != "" {
			t.Errorf("k=%d: prefix + continuation (-got +want unbroken):\n%s", k, diff)
		}
		u, err := f.router.Complete(ctx, withPrefix(longRequest(), prefix))
		if err != nil {
			t.Fatal(err)
		}
		if u.GetContent() != strings.Join(got, "") || u.GetId() != whole.GetId() ||
			int(u.GetUsage().GetCompletionTokens()) != 30-k || u.GetUsage().GetPromptTokens() <= whole.GetUsage().GetPromptTokens() {
			t.Errorf("k=%d: unary continuation %v; want the streamed rest, the unbroken id, %d completion tokens, more prompt tokens than %d",
				k, u, 30-k, whole.GetUsage().GetPromptTokens())
		}
	}

	// Over HTTP, "prefix": true in the JSON message.
	prefix := strings.Join(deltas[:12], "")
	pb, _ := json.Marshal(prefix)
	body := `{"model":"deepseek-chat","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"tell me a long story about the sea"},` +
		`{"role":"assistant","content":` + string(pb) + `,"prefix":true}]}`
	unary, streamed := unaryAndStream(t, f, body)
	if got := prefix + deref(unary.Choices[0].Message.Content); got != whole.GetContent() {
		t.Errorf("HTTP unary: prefix + answer = %q, want %q", got, whole.GetContent())
	}
	if got := prefix + streamed.content; got != whole.GetContent() || streamed.finish != "stop" {
		t.Errorf("HTTP stream: prefix + answer = %q (finish %q), want %q", got, streamed.finish, whole.GetContent())
	}

	// A prefix the answer does not start with gets the whole answer.
	got, _, err := streamText(t, f, withPrefix(longRequest(), "Once upon a time"))
	if err != nil || strings.Join(got, "") != whole.GetContent() {
		t.Errorf("foreign prefix: %q (%v), want the whole answer %q", strings.Join(got, ""), err, whole.GetContent())
	}

	// A prefix anywhere but on a last assistant message is refused.
	bad := withPrefix(longRequest(), "x")
	bad.Messages[1].Prefix = true
	if _, err := f.router.Complete(ctx, bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("prefix on a user message: %v, want InvalidArgument", err)
	}
}

// Without PrefixCompletion the prefix flag is ignored: the assistant turn is
// part of the conversation, and the answer is not its continuation.
func TestPrefixIgnoredWhenOff(t *testing.T) {
	f := start(t, fakellm.Config{Region: "pool", Settings: fakellm.Settings{AnswerTokens: 30}})
	deltas, _, err := streamText(t, f, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := streamText(t, f, withPrefix(longRequest(), strings.Join(deltas[:5], "")))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 30 || strings.Join(got, "") == strings.Join(deltas, "") {
		t.Errorf("with prefix completion off: %d deltas %q; want a whole answer of 30, other than the unbroken one", len(got), strings.Join(got, ""))
	}
}

// BreakRate breaks streams after some of their chunks, before the last:
// dropped (gRPC UNAVAILABLE, HTTP connection cut) or clean (gRPC OK, an
// HTTP body without [DONE]), without a finish reason either way; what went
// out is a prefix of the unbroken answer. Unary answers do not break.
func TestBreakRate(t *testing.T) {
	for _, clean := range []bool{false, true} {
		t.Run(map[bool]string{false: "dropped", true: "clean"}[clean], func(t *testing.T) {
			cleanShare := 0.0
			if clean {
				cleanShare = 1
			}
			f := start(t, fakellm.Config{Region: "pool", Settings: fakellm.Settings{AnswerTokens: 20}})
			ctx := context.Background()
			whole, err := f.router.Complete(ctx, longRequest())
			if err != nil {
				t.Fatal(err)
			}
			if err := f.srv.SetSettings(fakellm.Settings{AnswerTokens: 20, BreakRate: 1, BreakClean: cleanShare}); err != nil {
				t.Fatal(err)
			}
			const n = 20
			for range n {
				deltas, finished, err := streamText(t, f, longRequest())
				switch {
				case clean && err != nil, !clean && status.Code(err) != codes.Unavailable:
					t.Fatalf("stream ended with %v", err)
				case finished:
					t.Fatal("a broken stream carried a finish reason")
				case len(deltas) < 1 || len(deltas) > 19:
					t.Fatalf("%d deltas, want 1..19", len(deltas))
				case !strings.HasPrefix(whole.GetContent(), strings.Join(deltas, "")):
					t.Fatalf("%q is not a prefix of the unbroken answer %q", strings.Join(deltas, ""), whole.GetContent())
				}
			}
			if u, err := f.router.Complete(ctx, longRequest()); err != nil || u.GetContent() != whole.GetContent() {
				t.Errorf("unary answer %v, %v: want the whole answer", u, err)
			}

			// HTTP.
			req, _ := http.NewRequest(http.MethodPost, f.base+"/v1/chat/completions",
				strings.NewReader(`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"tell me a long story about the sea"}]}`))
			resp, err := f.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if clean != (err == nil) {
				t.Errorf("HTTP body read error %v, want an error: %v", err, !clean)
			}
			if strings.Contains(string(body), "[DONE]") || strings.Contains(string(body), `"finish_reason":"stop"`) {
				t.Errorf("a broken HTTP stream finished:\n%s", body)
			}
			if !strings.Contains(string(body), `"content":"[pool]"`) {
				t.Errorf("a broken HTTP stream sent no token:\n%s", body)
			}
			st := settled(t, f.srv)
			if st.Broken != n+1 || st.OK != 2 {
				t.Errorf("stats %+v: want %d broken, 2 OK", st, n+1)
			}
		})
	}
}

// TTFT holds the first token back: over HTTP the answer's headers and role
// chunk go out at once and the tokens wait; over gRPC nothing comes.
func TestTTFTHoldsTheFirstToken(t *testing.T) {
	f := start(t, fakellm.Config{Settings: fakellm.Settings{TTFT: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.base+"/v1/chat/completions",
		strings.NewReader(`{"model":"deepseek-chat","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf) // the role chunk, flushed on its own
	if err != nil || !strings.Contains(string(buf[:n]), `"role":"assistant"`) || strings.Contains(string(buf[:n]), "hi") {
		t.Fatalf("first read %q, %v: want the role chunk alone", buf[:n], err)
	}
	cancel()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Errorf("reading on after cancel: %v, want context.Canceled", err)
	}

	gctx, gcancel := context.WithCancel(context.Background())
	st, err := f.router.StreamComplete(gctx, helloRequest())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both requests in flight", func() bool { return f.srv.Stats().Total == 2 })
	gcancel()
	if _, err := st.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("gRPC stream: %v, want Canceled before any chunk", err)
	}
	if s := settled(t, f.srv); s.Canceled != 2 {
		t.Errorf("stats %+v: want 2 canceled", s)
	}
}

// Usage adds up the prompt of every answer that started and the tokens
// sent, a broken stream's included, over HTTP and gRPC; /usage reports it
// and /stats/reset zeroes it.
func TestUsage(t *testing.T) {
	f := start(t, fakellm.Config{Region: "pool", Settings: fakellm.Settings{AnswerTokens: 20}})
	ctx := context.Background()
	u, err := f.router.Complete(ctx, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	prompt := uint64(u.GetUsage().GetPromptTokens())
	if _, _, err := streamText(t, f, longRequest()); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.SetSettings(fakellm.Settings{AnswerTokens: 20, BreakRate: 1, BreakClean: 1}); err != nil {
		t.Fatal(err)
	}
	deltas, _, err := streamText(t, f, longRequest())
	if err != nil {
		t.Fatal(err)
	}
	r := f.chat(t, `{"model":"deepseek-chat","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"tell me a long story about the sea"}]}`)
	if r.code != http.StatusOK {
		t.Fatalf("unary over HTTP: %d %s", r.code, r.body)
	}
	settled(t, f.srv)
	want := fakellm.Usage{PromptTokens: 4 * prompt, CompletionTokens: uint64(20 + 20 + len(deltas) + 20)}
	if diff := cmp.Diff(f.srv.Usage(), want); diff != "" {
		t.Errorf("Usage (-got +want):\n%s", diff)
	}
	var got fakellm.Usage
	if r := f.do(t, ctx, http.MethodGet, "/usage", ""); r.code != http.StatusOK || json.Unmarshal(r.body, &got) != nil || got != want {
		t.Errorf("GET /usage: %d %s, want %+v", r.code, r.body, want)
	}
	f.do(t, ctx, http.MethodPost, "/stats/reset", "")
	if u := f.srv.Usage(); u != (fakellm.Usage{}) {
		t.Errorf("Usage after reset: %+v, want zero", u)
	}
}
