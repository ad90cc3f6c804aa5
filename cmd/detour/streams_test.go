package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// answerTokens is the length of the answers in the stream tests: long
// enough that a break falls mid-way.
const answerTokens = 40

// breakPair is a detour in region "a" whose own backend breaks every stream
// after some chunks (a random number: 1..39), and whose region "b" has a
// backend that never breaks. Both simulate the same provider (same fakellm
// region), so they give the same answer to the same messages.
type breakPair struct {
	c      detourv1.RouterClient
	whole  *fakellm.Server
	direct detourv1.RouterClient // whole's own gRPC service
}

// startBreakPair starts it: the broken backend over HTTP (kind openai) or
// gRPC (kind detour), dropping the stream or closing it cleanly; the whole
// one the other way, with prefix completion or not.
func startBreakPair(t *testing.T, brokenOverGRPC, clean, prefix bool, streams regions.StreamPolicy) *breakPair {
	t.Helper()
	cleanShare := 0.0
	if clean {
		cleanShare = 1
	}
	broken := startFake(t, fakellm.Config{Name: "broken-1", Region: "pool", Settings: fakellm.Settings{
		AnswerTokens: answerTokens, BreakRate: 1, BreakClean: cleanShare, PrefixCompletion: true}}, true)
	whole := startFake(t, fakellm.Config{Name: "whole-1", Region: "pool", Settings: fakellm.Settings{
		AnswerTokens: answerTokens, PrefixCompletion: prefix}}, true)
	bb, wb := openaiBackend("broken-1", broken), regions.Backend{Name: "whole-1", Kind: regions.KindDetour, Endpoint: whole.GRPCAddr()}
	if brokenOverGRPC {
		bb, wb = regions.Backend{Name: "broken-1", Kind: regions.KindDetour, Endpoint: broken.GRPCAddr()}, openaiBackend("whole-1", whole)
	}
	wb.PrefixCompletion = prefix
	cfg := &regions.Config{
		Regions: []regions.Region{
			{Name: "a", Backends: []regions.Backend{bb}},
			{Name: "b", Priority: 1, Backends: []regions.Backend{wb}},
		},
		Streams: streams,
		Cache:   regions.CachePolicy{Disabled: true},
	}
	return &breakPair{c: startDetour(t, cfg, "a"), whole: whole, direct: dial(t, whole.GRPCAddr())}
}

func storyReq() *detourv1.CompleteRequest {
	return userReq("tell me a long story about the sea")
}

// streamAll reads a stream to its end: the chunks, and the error it ended
// with (nil for a clean end).
func streamAll(t *testing.T, c detourv1.RouterClient, req *detourv1.CompleteRequest) ([]*detourv1.CompleteChunk, error) {
	t.Helper()
	st, err := c.StreamComplete(callCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var chunks []*detourv1.CompleteChunk
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return chunks, nil
		}
		if err != nil {
			return chunks, err
		}
		chunks = append(chunks, ch)
	}
}

// TestStreamContinuedOnAnotherBackend: a stream that breaks mid-way on a
// real upstream is continued on another one over real gRPC and HTTP, and
// the caller sees one answer. With prefix completion it is the unbroken
// answer, token for token; with the continue prompt it is the text so far
// followed by what the model answers to the conversation detour sent. The
// chunks after the splice say continued and name the new backend; the usage
// adds both parts.
func TestStreamContinuedOnAnotherBackend(t *testing.T) {
	for _, tc := range []struct {
		brokenOverGRPC, clean, prefix bool
	}{
		{brokenOverGRPC: false, clean: false, prefix: true},
		{brokenOverGRPC: true, clean: true, prefix: true},
		{brokenOverGRPC: true, clean: false, prefix: false},
		{brokenOverGRPC: false, clean: true, prefix: false},
	} {
		name := fmt.Sprintf("broken over %s, %s, %s", map[bool]string{false: "HTTP", true: "gRPC"}[tc.brokenOverGRPC],
			map[bool]string{false: "dropped", true: "closed cleanly"}[tc.clean],
			map[bool]string{false: "continue prompt", true: "prefix completion"}[tc.prefix])
		t.Run(name, func(t *testing.T) {
			for round := range 4 { // four breaks at random places
				// A fresh pair each time: after a few failures detour
				// rightly sends broken-1 less of the traffic.
				p := startBreakPair(t, tc.brokenOverGRPC, tc.clean, tc.prefix, regions.StreamPolicy{Continuation: true})
				unbroken, err := p.direct.Complete(callCtx(t), storyReq())
				if err != nil {
					t.Fatal(err)
				}
				chunks, err := streamAll(t, p.c, storyReq())
				if err != nil {
					t.Fatalf("round %d: the stream failed after %d chunks: %v", round, len(chunks), err)
				}
				var before, after strings.Builder
				spliced := false
				for i, ch := range chunks {
					switch {
					case !ch.GetContinued() && spliced:
						t.Fatalf("round %d: chunk %d is not marked continued after the splice", round, i)
					case ch.GetContinued():
						spliced = true
						after.WriteString(ch.GetDelta())
						if b := ch.GetServedBy().GetBackend(); b != "whole-1" {
							t.Errorf("round %d: continued chunk %d served by %q, want whole-1", round, i, b)
						}
						if ch.GetId() != chunks[0].GetId() {
							t.Errorf("round %d: continued chunk %d has id %q, want the first part's %q", round, i, ch.GetId(), chunks[0].GetId())
						}
					default:
						before.WriteString(ch.GetDelta())
						if b := ch.GetServedBy().GetBackend(); b != "broken-1" {
							t.Errorf("round %d: chunk %d before the splice served by %q, want broken-1", round, i, b)
						}
					}
				}
				last := chunks[len(chunks)-1]
				switch {
				case !spliced:
					t.Fatalf("round %d: no chunk marked continued: the stream did not break?", round)
				case before.Len() == 0 || !strings.HasPrefix(unbroken.GetContent(), before.String()):
					t.Fatalf("round %d: the text before the splice %q is not a start of the answer %q", round, before.String(), unbroken.GetContent())
				case last.GetFinishReason() != "stop":
					t.Errorf("round %d: the last chunk's finish reason is %q, want stop", round, last.GetFinishReason())
				}
				if tc.prefix {
					if got := before.String() + after.String(); got != unbroken.GetContent() {
						t.Errorf("round %d: spliced answer differs from the unbroken one:\n got %q\nwant %q", round, got, unbroken.GetContent())
					}
					if n := last.GetUsage().GetCompletionTokens(); n != answerTokens {
						t.Errorf("round %d: usage %d completion tokens, want both parts' %d", round, n, answerTokens)
					}
					continue
				}
				// The continue prompt: the model answers the conversation
				// with the text so far and the instruction after it.
				cont := storyReq()
				cont.Messages = append(cont.Messages,
					&detourv1.Message{Role: "assistant", Content: before.String()},
					&detourv1.Message{Role: "user", Content: regions.DefaultContinuePrompt})
				want, err := p.direct.Complete(callCtx(t), cont)
				if err != nil {
					t.Fatal(err)
				}
				if after.String() != want.GetContent() {
					t.Errorf("round %d: continued part %q, want the answer to the continue prompt %q", round, after.String(), want.GetContent())
				}
			}
		})
	}
}

// TestStreamBreakWithoutContinuation: with continuation off (the default,
// or refused by the caller) a stream that broke after it started fails
// UNAVAILABLE, dropped or closed cleanly, and nothing else is asked.
func TestStreamBreakWithoutContinuation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		clean   bool
		streams regions.StreamPolicy
		hint    detourv1.Continuation
	}{
		{name: "off by default, dropped", streams: regions.StreamPolicy{}},
		{name: "off by default, closed cleanly", clean: true, streams: regions.StreamPolicy{}},
		{name: "refused by the caller", streams: regions.StreamPolicy{Continuation: true}, hint: detourv1.Continuation_CONTINUATION_OFF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startBreakPair(t, false, tc.clean, true, tc.streams)
			req := storyReq()
			req.Routing = &detourv1.RoutingHints{Continuation: tc.hint}
			chunks, err := streamAll(t, p.c, req)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream ended with %v after %d chunks, want UNAVAILABLE", err, len(chunks))
			}
			if len(chunks) == 0 {
				t.Error("no chunk before the break")
			}
			for i, ch := range chunks {
				if ch.GetContinued() || ch.GetFinishReason() != "" {
					t.Errorf("chunk %d: continued %v, finish %q; want neither", i, ch.GetContinued(), ch.GetFinishReason())
				}
			}
			if n := p.whole.Stats().Total; n != 0 {
				t.Errorf("the other backend got %d requests, want none", n)
			}
		})
	}
}
