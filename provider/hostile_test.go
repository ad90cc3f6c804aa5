package provider

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/breaker"
	"github.com/detour-dev/detour/internal/hostile"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// The tests of this file each reproduce a fault of issue 13 with an
// upstream from internal/hostile.

// maxEcho bounds an error that quotes an upstream: an excerpt of a few
// hundred bytes with its clip mark, plus detour's own words.
const maxEcho = 512

// serveHostile serves h on loopback and returns a client for it.
func serveHostile(t *testing.T, key string, h http.Handler) *OpenAI {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return newOpenAI(t, ts.URL, key)
}

// checkEcho fails t when msg is unbounded, invalid UTF-8, or holds one of
// secrets.
func checkEcho(t *testing.T, msg string, secrets ...string) {
	t.Helper()
	if len(msg) > maxEcho {
		t.Errorf("message is %d bytes, want <= %d: %.200q...", len(msg), maxEcho, msg)
	}
	if !utf8.ValidString(msg) {
		t.Errorf("message is not valid UTF-8: %q", msg)
	}
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("message holds %q: %q", s, msg)
		}
	}
}

// TestUpstreamErrorBodyIsClippedAndScrubbed: a 4xx body quoting the
// prompt at length and a masked key, another quoting a bearer token: the
// error keeps a clipped, marked excerpt without either credential.
func TestUpstreamErrorBodyIsClippedAndScrubbed(t *testing.T) {
	prompt := strings.Repeat("my secret prompt ", 1000)
	tests := []struct {
		name, body string
		secrets    []string
	}{
		{name: "masked key", body: `{"error":{"message":"Incorrect API key provided: sk-proj-********************wxyz. Prompt: ` + prompt + `"}}`,
			secrets: []string{"sk-proj", "wxyz"}},
		{name: "bearer", body: `{"error":"header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123 refused; ` + prompt + `"}`,
			secrets: []string{"eyJhbGciOiJIUzI1NiJ9"}},
		{name: "own key in plain text", body: strings.Repeat("x", 150) + " key sk-live-0123456789 " + prompt,
			secrets: []string{"sk-live-0123456789", "sk-live"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := serveHostile(t, "sk-live-0123456789", hostile.Status(http.StatusBadRequest, tt.body))
			_, err := o.Complete(t.Context(), userRequest("hi"))
			errCheck{class: breaker.Client}.check(t, err)
			checkEcho(t, err.Error(), tt.secrets...)
			if !strings.Contains(err.Error(), "clipped") {
				t.Errorf("error %q is not marked as clipped", err)
			}
		})
	}
}

// TestDetourStatusMessageIsClippedAndScrubbed: a detour backend whose
// status message is 200 KB and quotes a key.
func TestDetourStatusMessageIsClippedAndScrubbed(t *testing.T) {
	msg := "rejected sk-proj-****abcd: " + strings.Repeat("é", 100<<10)
	addr := newGRPCServer(t, &fakeRouter{
		complete: func(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
			return nil, status.Error(codes.InvalidArgument, msg)
		},
		stream: func(*detourv1.CompleteRequest, grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
			return status.Error(codes.InvalidArgument, msg)
		},
	})
	d := newDetour(t, addr, "")
	_, err := d.Complete(t.Context(), userRequest("hi"))
	errCheck{class: breaker.Client}.check(t, err)
	checkEcho(t, err.Error(), "sk-proj")
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Errorf("status.Code = %v, want InvalidArgument", got)
	}
	st, err := d.Stream(t.Context(), userRequest("hi"))
	if err == nil {
		defer st.Close()
		_, err = st.Recv()
	}
	errCheck{class: breaker.Client}.check(t, err)
	checkEcho(t, err.Error(), "sk-proj")
}

// TestEmptyChoiceIsMalformed: a 200 whose only choice is empty, or that
// has no choices, is a malformed answer (Failed: tried elsewhere), not an
// empty success.
func TestEmptyChoiceIsMalformed(t *testing.T) {
	for _, body := range []string{
		`{"choices":[{}]}`,
		`{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":null}]}`,
		`{"id":"x","choices":[]}`,
		`{}`,
	} {
		t.Run(body, func(t *testing.T) {
			o := serveHostile(t, "", hostile.Answer(body))
			resp, err := o.Complete(t.Context(), userRequest("hi"))
			if err == nil {
				t.Fatalf("Complete = %v, want a malformed answer", resp)
			}
			errCheck{class: breaker.Failed, is: ErrMalformed}.check(t, err)
		})
	}
}

// TestStreamDoneWithoutFinishReasonIsIncomplete: a stream that says
// [DONE] without ever giving a finish reason did not finish its answer.
func TestStreamDoneWithoutFinishReasonIsIncomplete(t *testing.T) {
	o := serveHostile(t, "", hostile.Stream(hostile.Delta("Hel", ""), hostile.Delta("lo", ""), "[DONE]"))
	st, err := o.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var got strings.Builder
	for {
		c, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with io.EOF after %q: want ErrIncomplete", got.String())
			}
			errCheck{class: breaker.Failed, is: ErrIncomplete}.check(t, err)
			break
		}
		got.WriteString(c.GetDelta())
	}
	if got.String() != "Hello" {
		t.Errorf("deltas before the error = %q, want %q", got.String(), "Hello")
	}
}

// TestDetourStreamEndWithoutFinishReasonIsIncomplete: the same for a
// detour backend whose stream ends cleanly without a finish reason.
func TestDetourStreamEndWithoutFinishReasonIsIncomplete(t *testing.T) {
	addr := newGRPCServer(t, &fakeRouter{
		stream: func(_ *detourv1.CompleteRequest, st grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
			return st.Send(&detourv1.CompleteChunk{Delta: "Hel"})
		},
	})
	d := newDetour(t, addr, "")
	st, err := d.Stream(t.Context(), userRequest("hi"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if errors.Is(err, io.EOF) {
		t.Fatal("stream ended with io.EOF: want ErrIncomplete")
	}
	errCheck{class: breaker.Failed, is: ErrIncomplete}.check(t, err)
}

// TestDetourEmptyAnswerIsMalformed: a detour backend answering OK with
// neither content nor a finish reason.
func TestDetourEmptyAnswerIsMalformed(t *testing.T) {
	addr := newGRPCServer(t, &fakeRouter{
		complete: func(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
			return &detourv1.CompleteResponse{Id: "x"}, nil
		},
	})
	d := newDetour(t, addr, "")
	resp, err := d.Complete(t.Context(), userRequest("hi"))
	if err == nil {
		t.Fatalf("Complete = %v, want a malformed answer", resp)
	}
	errCheck{class: breaker.Failed, is: ErrMalformed}.check(t, err)
}
