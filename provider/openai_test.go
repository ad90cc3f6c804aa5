package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// newHTTPServer starts h on loopback; it is closed when the test ends.
func newHTTPServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

// newOpenAI returns a client for the server at url, closed when the test ends.
func newOpenAI(t *testing.T, url, key string) *OpenAI {
	t.Helper()
	o, err := NewOpenAI(backendFor(t, "", url+"/v1", key))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// hang blocks a handler until its client goes away or the test ends.
func hang(t *testing.T, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-t.Context().Done():
	}
}

// sse writes events to w as a text/event-stream, flushing each.
func sse(w http.ResponseWriter, events ...string) {
	w.Header().Set("Content-Type", "text/event-stream")
	for _, e := range events {
		fmt.Fprintf(w, "data: %s\n\n", e)
		w.(http.Flusher).Flush()
	}
}

func TestOpenAIComplete(t *testing.T) {
	tests := []struct {
		name     string
		req      *detourv1.CompleteRequest
		answer   string
		wantBody map[string]any
		want     *detourv1.CompleteResponse
	}{
		{
			name:   "optional fields unset",
			req:    userRequest("hi"),
			answer: `{"id":"c1","object":"chat.completion","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`,
			wantBody: map[string]any{
				"model":    "deepseek-chat",
				"messages": []any{map[string]any{"role": "user", "content": "hi"}},
			},
			want: &detourv1.CompleteResponse{
				Id: "c1", Model: "deepseek-chat", Content: "Hello", FinishReason: "stop",
				Usage: &detourv1.Usage{PromptTokens: 3, CompletionTokens: 1, TotalTokens: 4},
			},
		},
		{
			name: "every field set, zero temperature kept",
			req: &detourv1.CompleteRequest{
				Model: "deepseek-chat",
				Messages: []*detourv1.Message{
					{Role: "system", Content: "be brief"},
					{Role: "user", Content: "hi", Name: "ann"},
				},
				Temperature: proto.Float64(0),
				TopP:        proto.Float64(0.5),
				MaxTokens:   64,
				Stop:        []string{"\n\n", "END"},
				User:        "u-1",
				Routing:     &detourv1.RoutingHints{PreferRegion: "eu"},
				Cache:       &detourv1.CacheHints{NoCache: true},
			},
			answer: `{"id":"c2","model":"deepseek-chat","choices":[{"message":{"content":"ok"},"finish_reason":null}]}`,
			wantBody: map[string]any{
				"model": "deepseek-chat",
				"messages": []any{
					map[string]any{"role": "system", "content": "be brief"},
					map[string]any{"role": "user", "content": "hi", "name": "ann"},
				},
				"temperature": 0.0,
				"top_p":       0.5,
				"max_tokens":  64.0,
				"stop":        []any{"\n\n", "END"},
				"user":        "u-1",
			},
			want: &detourv1.CompleteResponse{Id: "c2", Model: "deepseek-chat", Content: "ok"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotBody map[string]any
			var gotHeader http.Header
			var gotPath string
			ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
				gotPath, gotHeader = r.Method+" "+r.URL.Path, r.Header
				if err := json.NewDecoder(r.Body).Decode(&gotBody); err != nil {
					t.Errorf("request body: %v", err)
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, tt.answer)
			})
			o := newOpenAI(t, ts.URL, "sk-test")

			got, err := o.Complete(t.Context(), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantBody, gotBody); diff != "" {
				t.Errorf("request body (-want +got):\n%s", diff)
			}
			if want := "POST /v1/chat/completions"; gotPath != want {
				t.Errorf("request = %q, want %q", gotPath, want)
			}
			for k, want := range map[string]string{
				"Authorization": "Bearer sk-test",
				"Content-Type":  "application/json",
				"Accept":        "application/json",
			} {
				if got := gotHeader.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestOpenAINoKeyNoAuthorization(t *testing.T) {
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "" {
			t.Errorf("Authorization = %q, want none", got)
		}
		io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}]}`)
	})
	if _, err := newOpenAI(t, ts.URL, "").Complete(t.Context(), userRequest("hi")); err != nil {
		t.Fatal(err)
	}
}

func TestOpenAICompleteErrors(t *testing.T) {
	inAnHour := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	tests := []struct {
		name   string
		status int
		header map[string]string
		body   string
		want   errCheck
		// wantRetryAfter, when set, replaces an exact want.retryAfter for
		// hints computed from the clock.
		wantRetryAfter func(time.Duration) bool
		wantStatus     int
	}{
		{
			name:       "503 server busy",
			status:     503,
			body:       `{"error":{"message":"Server is busy, please retry later.","type":"server_busy"}}`,
			want:       errCheck{class: breaker.Busy, contains: "HTTP 503: Server is busy, please retry later."},
			wantStatus: 503,
		},
		{
			name:       "429 retry-after seconds",
			status:     429,
			header:     map[string]string{"Retry-After": "2"},
			body:       `{"error":{"message":"Rate limit reached"}}`,
			want:       errCheck{class: breaker.Busy, retryAfter: 2 * time.Second, contains: "(retry after 2s)"},
			wantStatus: 429,
		},
		{
			name:   "429 retry-after http-date",
			status: 429,
			header: map[string]string{"Retry-After": inAnHour},
			want:   errCheck{class: breaker.Busy},
			wantRetryAfter: func(d time.Duration) bool {
				return d > 58*time.Minute && d <= time.Hour
			},
			wantStatus: 429,
		},
		{
			name:       "529 overloaded",
			status:     529,
			body:       `{"error":{"type":"overloaded_error","message":"Overloaded"}}`,
			want:       errCheck{class: breaker.Busy, contains: "Overloaded"},
			wantStatus: 529,
		},
		{
			name:       "500 with busy text",
			status:     500,
			body:       "upstream overloaded\n",
			want:       errCheck{class: breaker.Busy, contains: "upstream overloaded"},
			wantStatus: 500,
		},
		{
			name:       "500 other",
			status:     500,
			body:       `{"error":{"message":"internal error"}}`,
			want:       errCheck{class: breaker.Failed, contains: "internal error"},
			wantStatus: 500,
		},
		{
			name:       "400 bad request",
			status:     400,
			body:       `{"error":{"message":"messages: required","type":"invalid_request_error"}}`,
			want:       errCheck{class: breaker.Client, contains: "HTTP 400: messages: required"},
			wantStatus: 400,
		},
		{
			name:       "401 no body",
			status:     401,
			want:       errCheck{class: breaker.Client, contains: "HTTP 401 Unauthorized"},
			wantStatus: 401,
		},
		{
			name:       "redirect not followed",
			status:     307,
			header:     map[string]string{"Location": "http://127.0.0.1:1/elsewhere"},
			want:       errCheck{class: breaker.Failed, contains: "HTTP 307"},
			wantStatus: 307,
		},
		{
			name:       "garbage json",
			status:     200,
			body:       "<html>hello</html>",
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "malformed answer"},
			wantStatus: 200,
		},
		{
			name:       "truncated json",
			status:     200,
			body:       `{"id":"c1","choices":[{"message":{"content":"Hel`,
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "malformed answer"},
			wantStatus: 200,
		},
		{
			name:       "no choices",
			status:     200,
			body:       `{"id":"c1","choices":[]}`,
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "malformed answer: no choices"},
			wantStatus: 200,
		},
		{
			name: "error object with 200, busy words do not make it busy",
			// A 2xx is a malformed answer whatever it says.
			status:     200,
			body:       `{"error":{"message":"server busy"}}`,
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "upstream said: server busy"},
			wantStatus: 200,
		},
		{
			name:       "answer over the cap",
			status:     200,
			body:       `{"choices":[{"message":{"content":"` + strings.Repeat("x", maxAnswerBytes) + `"}}]}`,
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "answer too large"},
			wantStatus: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			o := newOpenAI(t, ts.URL, "")

			_, err := o.Complete(t.Context(), userRequest("hi"))
			if tt.wantRetryAfter != nil {
				if d := breaker.RetryAfter(err); !tt.wantRetryAfter(d) {
					t.Errorf("RetryAfter = %v, out of range", d)
				}
				tt.want.retryAfter = breaker.RetryAfter(err)
			}
			tt.want.check(t, err)
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("error %T is not an *HTTPError", err)
			}
			if he.StatusCode() != tt.wantStatus {
				t.Errorf("StatusCode = %d, want %d", he.StatusCode(), tt.wantStatus)
			}
			if len(he.Message) > maxMessageBytes+40 {
				t.Errorf("Message is %d bytes long", len(he.Message))
			}
		})
	}
}

func TestOpenAIStream(t *testing.T) {
	var gotBody map[string]any
	var gotAccept string
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		gotAccept = r.Header.Get("Accept")
		if err := json.NewDecoder(r.Body).Decode(&gotBody); err != nil {
			t.Errorf("request body: %v", err)
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		io.WriteString(w, ": keep-alive\n\n")
		sse(w,
			`{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}`,
			`{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}`,
			`{"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}],"usage":null}`,
			`{"id":"c1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}`,
			`{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`,
			"[DONE]",
		)
	})
	o := newOpenAI(t, ts.URL, "")

	st, err := o.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var got []*detourv1.CompleteChunk
	for {
		c, err := st.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d chunks: %v", len(got), err)
		}
		got = append(got, c)
	}
	want := []*detourv1.CompleteChunk{
		{Id: "c1", Model: "m", Delta: "Hel"},
		{Id: "c1", Model: "m", Delta: "lo"},
		{Id: "c1", Model: "m", FinishReason: "stop"},
		{Id: "c1", Model: "m", Usage: &detourv1.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("chunks (-want +got):\n%s", diff)
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Errorf("Recv after the end = %v, want io.EOF", err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	wantBody := map[string]any{
		"model":          "deepseek-chat",
		"messages":       []any{map[string]any{"role": "user", "content": "hi"}},
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
	}
	if diff := cmp.Diff(wantBody, gotBody); diff != "" {
		t.Errorf("request body (-want +got):\n%s", diff)
	}
	if gotAccept != "text/event-stream" {
		t.Errorf("Accept = %q, want text/event-stream", gotAccept)
	}
}

func TestOpenAIStreamErrors(t *testing.T) {
	const chunk = `{"id":"c1","model":"m","choices":[{"delta":{"content":"Hel"}}]}`
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantChunks int
		// wantStreamErr: the error comes from Stream rather than Recv.
		wantStreamErr bool
		want          errCheck
	}{
		{
			name:       "ends without [DONE]",
			handler:    func(w http.ResponseWriter, r *http.Request) { sse(w, chunk, chunk) },
			wantChunks: 2,
			want:       errCheck{class: breaker.Failed, is: ErrIncomplete, contains: "[DONE]"},
		},
		{
			name: "cut inside an event",
			handler: func(w http.ResponseWriter, r *http.Request) {
				sse(w, chunk)
				io.WriteString(w, `data: {"id":"c1","choi`)
			},
			wantChunks: 1,
			want:       errCheck{class: breaker.Failed, is: ErrIncomplete, contains: "[DONE]"},
		},
		{
			name: "connection dropped mid-stream",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100000")
				sse(w, chunk)
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
			},
			wantChunks: 1,
			want:       errCheck{class: breaker.Failed, is: ErrIncomplete},
		},
		{
			name:       "garbage event",
			handler:    func(w http.ResponseWriter, r *http.Request) { sse(w, chunk, "{not json", "[DONE]") },
			wantChunks: 1,
			want:       errCheck{class: breaker.Failed, is: ErrMalformed, contains: "stream event"},
		},
		{
			name: "error event saying overloaded",
			handler: func(w http.ResponseWriter, r *http.Request) {
				sse(w, chunk, `{"error":{"message":"Overloaded","type":"overloaded_error"}}`)
			},
			wantChunks: 1,
			want:       errCheck{class: breaker.Busy, contains: "Overloaded"},
		},
		{
			name: "error event",
			handler: func(w http.ResponseWriter, r *http.Request) {
				sse(w, `{"error":{"message":"model crashed"}}`)
			},
			want: errCheck{class: breaker.Failed, contains: "model crashed"},
		},
		{
			name: "503 before the stream",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(503)
				io.WriteString(w, `{"error":{"message":"Server busy"}}`)
			},
			wantStreamErr: true,
			want:          errCheck{class: breaker.Busy, retryAfter: time.Second, contains: "Server busy"},
		},
		{
			name: "json instead of a stream",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"error":{"message":"streaming not supported"}}`)
			},
			wantStreamErr: true,
			want:          errCheck{class: breaker.Failed, is: ErrMalformed, contains: "streaming not supported"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newHTTPServer(t, tt.handler)
			o := newOpenAI(t, ts.URL, "")

			st, err := o.Stream(t.Context(), userRequest("hi"))
			if tt.wantStreamErr {
				tt.want.check(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			n := 0
			for {
				_, err = st.Recv()
				if err != nil {
					break
				}
				n++
			}
			if n != tt.wantChunks {
				t.Errorf("got %d chunks before the error, want %d", n, tt.wantChunks)
			}
			if err == io.EOF {
				t.Fatal("stream ended with a clean io.EOF")
			}
			tt.want.check(t, err)
			if _, again := st.Recv(); again != err {
				t.Errorf("Recv after an error = %v, want the same %v", again, err)
			}
		})
	}
}

// refusedURL returns the URL of a loopback port nobody listens on.
func refusedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestOpenAIConnectionRefused(t *testing.T) {
	o := newOpenAI(t, refusedURL(t), "")
	want := errCheck{class: breaker.Down, is: syscall.ECONNREFUSED}

	_, err := o.Complete(t.Context(), userRequest("hi"))
	want.check(t, err)
	_, err = o.Stream(t.Context(), userRequest("hi"))
	want.check(t, err)
}

// TestOpenAIHonoursContext: a hanging upstream returns once ctx ends, before
// the answer starts and in the middle of a stream; an attempt timeout is
// Busy, the caller's cancellation Canceled.
func TestOpenAIHonoursContext(t *testing.T) {
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") == "text/event-stream" {
			sse(w, `{"choices":[{"delta":{"content":"Hel"}}]}`)
		}
		hang(t, r)
	})
	o := newOpenAI(t, ts.URL, "")

	// midStream reads the first chunk, calls then, and returns the error of
	// the next Recv.
	midStream := func(ctx context.Context, then func()) error {
		st, err := o.Stream(ctx, userRequest("hi"))
		if err != nil {
			t.Fatalf("Stream: %v", err)
		}
		defer st.Close()
		if _, err := st.Recv(); err != nil {
			t.Fatalf("first Recv: %v", err)
		}
		then()
		_, err = st.Recv()
		return err
	}
	tests := []struct {
		name string
		call func(ctx context.Context, cancel func()) error
		want errCheck
	}{
		{
			name: "unary timeout",
			call: func(ctx context.Context, _ func()) error {
				_, err := o.Complete(ctx, userRequest("hi"))
				return err
			},
			want: errCheck{class: breaker.Down, is: context.DeadlineExceeded},
		},
		{
			name: "mid-stream timeout",
			call: func(ctx context.Context, _ func()) error { return midStream(ctx, func() {}) },
			want: errCheck{class: breaker.Down, is: context.DeadlineExceeded},
		},
		{
			name: "mid-stream cancel",
			call: func(ctx context.Context, cancel func()) error { return midStream(ctx, cancel) },
			want: errCheck{class: breaker.Canceled, is: context.Canceled},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timeout := 100 * time.Millisecond
			if tt.want.class == breaker.Canceled {
				timeout = time.Minute
			}
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			start := time.Now()
			err := tt.call(ctx, cancel)
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("returned after %v", elapsed)
			}
			tt.want.check(t, err)
		})
	}
}

// TestOpenAICloseAbortsRecv: Close from another goroutine ends a blocked Recv.
func TestOpenAICloseAbortsRecv(t *testing.T) {
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		sse(w, `{"choices":[{"delta":{"content":"Hel"}}]}`)
		hang(t, r)
	})
	o := newOpenAI(t, ts.URL, "")
	st, err := o.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := st.Recv()
		done <- err
	}()
	st.Close()
	if err := <-done; err == nil || err == io.EOF {
		t.Errorf("Recv after Close = %v, want an error", err)
	}
	st.Close()
}

// TestOpenAIReusesConnections: sequential calls, answered, streamed or
// refused, share one keep-alive connection.
func TestOpenAIReusesConnections(t *testing.T) {
	var conns atomic.Int32
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch {
		case strings.Contains(string(body), `"content":"busy"`):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"message":"Server is busy, `+strings.Repeat("please ", 1000)+`retry later"}}`)
		case r.Header.Get("Accept") == "text/event-stream":
			sse(w, `{"choices":[{"delta":{"content":"Hel"},"finish_reason":"stop"}]}`, `{"choices":[],"usage":{"total_tokens":1}}`, "[DONE]")
		default:
			io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}]}`)
		}
	}))
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	t.Cleanup(ts.Close)
	o := newOpenAI(t, ts.URL, "")

	for i := range 21 {
		switch i % 3 {
		case 0:
			if _, err := o.Complete(t.Context(), userRequest("hi")); err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
		case 1:
			st, err := o.Stream(t.Context(), userRequest("hi"))
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			for err == nil {
				_, err = st.Recv()
			}
			if err != io.EOF {
				t.Fatalf("call %d: %v", i, err)
			}
			st.Close()
		case 2:
			// An error status with a long body is drained too.
			_, err := o.Complete(t.Context(), userRequest("busy"))
			if got := breaker.Classify(err); got != breaker.Busy {
				t.Fatalf("call %d: %v is %v, want busy", i, err, got)
			}
		}
	}
	if got := conns.Load(); got != 1 {
		t.Errorf("%d connections for 21 sequential calls, want 1", got)
	}
}

// TestOpenAIKeyNeverInErrors: an upstream that echoes the key back, in any
// shape, does not get it into an error; nor does printing the client.
func TestOpenAIKeyNeverInErrors(t *testing.T) {
	const key = "sk-live-0123456789abcdef"
	tests := []struct {
		name    string
		stream  bool
		handler func(w http.ResponseWriter, auth string)
	}{
		{
			name: "401 json message",
			handler: func(w http.ResponseWriter, auth string) {
				w.WriteHeader(401)
				fmt.Fprintf(w, `{"error":{"message":"Incorrect API key provided: %s"}}`, auth)
			},
		},
		{
			name: "500 text body",
			handler: func(w http.ResponseWriter, auth string) {
				w.WriteHeader(500)
				fmt.Fprintf(w, "request headers: Authorization: %s", auth)
			},
		},
		{
			name: "key at the cut",
			handler: func(w http.ResponseWriter, auth string) {
				w.WriteHeader(400)
				fmt.Fprintf(w, "%s%s", strings.Repeat("x", maxMessageBytes-10), auth)
			},
		},
		{
			name: "200 without choices",
			handler: func(w http.ResponseWriter, auth string) {
				fmt.Fprintf(w, `{"error":{"message":"%s"}}`, auth)
			},
		},
		{
			name:   "stream error event",
			stream: true,
			handler: func(w http.ResponseWriter, auth string) {
				sse(w, fmt.Sprintf(`{"error":{"message":"bad key %s"}}`, auth))
			},
		},
		{
			name:   "stream of the wrong type",
			stream: true,
			handler: func(w http.ResponseWriter, auth string) {
				w.Header().Set("Content-Type", "text/plain")
				fmt.Fprintf(w, "key %s", auth)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
				tt.handler(w, r.Header.Get("Authorization"))
			})
			o := newOpenAI(t, ts.URL, key)

			var err error
			if tt.stream {
				var st chunkStream
				st, err = o.Stream(t.Context(), userRequest("hi"))
				if err == nil {
					_, err = st.Recv()
					st.Close()
				}
			} else {
				_, err = o.Complete(t.Context(), userRequest("hi"))
			}
			if err == nil {
				t.Fatal("error = nil")
			}
			for _, text := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				if strings.Contains(text, key) {
					t.Errorf("error holds the key: %s", text)
				}
			}
			if !strings.Contains(err.Error(), "[re") {
				t.Errorf("error %q does not say a key was redacted", err)
			}
		})
	}
	o := newOpenAI(t, refusedURL(t), key)
	for _, text := range []string{fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%+v", *o)} {
		if strings.Contains(text, key) {
			t.Errorf("printed client holds the key: %s", text)
		}
	}
	if _, err := o.Complete(t.Context(), userRequest("hi")); err == nil || strings.Contains(err.Error(), key) {
		t.Errorf("refused: %v", err)
	}
}

func TestNewOpenAI(t *testing.T) {
	tests := []struct {
		name    string
		backend func(t *testing.T) regions.Backend
		wantErr string
	}{
		{
			name:    "base url with trailing slash",
			backend: func(t *testing.T) regions.Backend { return backendFor(t, "openai", "https://api.example.com/v1/", "k") },
		},
		{
			name:    "detour kind",
			backend: func(t *testing.T) regions.Backend { return backendFor(t, "detour", "127.0.0.1:1", "") },
			wantErr: `kind "detour" is not "openai"`,
		},
		{
			name:    "host:port",
			backend: func(t *testing.T) regions.Backend { return backendFor(t, "", "127.0.0.1:8080", "") },
			wantErr: "endpoint",
		},
		{
			name:    "other scheme",
			backend: func(t *testing.T) regions.Backend { return backendFor(t, "", "ftp://127.0.0.1/v1", "") },
			wantErr: "must be an http:// or https:// URL",
		},
		{
			name: "missing key file",
			backend: func(t *testing.T) regions.Backend {
				b := backendFor(t, "", "http://127.0.0.1:1/v1", "")
				b.APIKeyFile = "/nonexistent/key"
				return b
			},
			wantErr: "api_key_file",
		},
		{
			name:    "key with a newline inside",
			backend: func(t *testing.T) regions.Backend { return backendFor(t, "", "http://127.0.0.1:1/v1", "sk-a\nb") },
			wantErr: "characters not allowed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := NewOpenAI(tt.backend(t))
			if err == nil {
				defer o.Close()
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if want := "https://api.example.com/v1/chat/completions"; o.url != want {
					t.Errorf("url = %q, want %q", o.url, want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "sk-a") {
				t.Errorf("error holds the key: %v", err)
			}
		})
	}
}

func TestOpenAIConcurrentUse(t *testing.T) {
	ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") == "text/event-stream" {
			sse(w, `{"choices":[{"delta":{"content":"Hel"},"finish_reason":"stop"}]}`, "[DONE]")
			return
		}
		io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}]}`)
	})
	o := newOpenAI(t, ts.URL, "sk-1")
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			for range 10 {
				if i%2 == 0 {
					if _, err := o.Complete(t.Context(), userRequest("hi")); err != nil {
						t.Error(err)
					}
					continue
				}
				st, err := o.Stream(t.Context(), userRequest("hi"))
				if err != nil {
					t.Error(err)
					continue
				}
				for err == nil {
					_, err = st.Recv()
				}
				if err != io.EOF {
					t.Error(err)
				}
				st.Close()
			}
		})
	}
	wg.Wait()
}
