package fakellm

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// gRPC errors of the fake. They are immutable and shared.
var (
	errBusy      = status.Error(codes.Unavailable, "server busy, please retry later")
	errRateLimit = mustDetails(status.New(codes.ResourceExhausted, "rate limit reached, please retry later"),
		&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
	errGarbage   = status.Error(codes.Internal, "fakellm: malformed response message")
	errCut       = status.Error(codes.Unavailable, "fakellm: connection cut")
	errShutdown  = status.Error(codes.Unavailable, "fakellm: server shutting down")
	errExhausted = status.Error(codes.ResourceExhausted, "Insufficient Balance")
)

func mustDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	st, err := st.WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// routerService serves detour.v1.Router for a Server.
type routerService struct {
	detourv1.UnimplementedRouterServer
	s *Server
}

// admit converts and checks a gRPC request and draws its fate. It returns
// a non-nil error for requests that end there, counted.
func (s *Server) admit(ctx context.Context, in *detourv1.CompleteRequest) (*chatRequest, *snapshot, outcome, error) {
	req := fromProto(in)
	if bad := req.validate(); bad != nil {
		s.stats.count(outcomeBadRequest)
		st := status.New(codes.InvalidArgument, bad.msg)
		if bad.field != "" {
			if d, err := st.WithDetails(&errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: bad.field, Description: bad.msg}},
			}); err == nil {
				st = d
			}
		}
		return nil, nil, 0, st.Err()
	}
	snap := s.snap.Load()
	fate := decide(snap, s.stats.inFlight.n.Load())
	switch fate {
	case outcomeRateLimited:
		s.stats.count(fate)
		return nil, nil, fate, errRateLimit
	case outcomeBusy:
		s.stats.count(fate)
		return nil, nil, fate, errBusy
	case outcomeExhausted:
		s.stats.count(fate)
		return nil, nil, fate, errExhausted
	case outcomeHang:
		s.stats.count(fate)
		s.hang(ctx)
		return nil, nil, fate, s.ended(ctx)
	}
	if !s.sleep(ctx, new(*time.Timer), snap.QueueDelay) {
		s.stats.count(outcomeCanceled)
		return nil, nil, fate, s.ended(ctx)
	}
	return req, snap, fate, nil
}

// fromProto converts a gRPC request to the OpenAI shape the fake reads.
func fromProto(in *detourv1.CompleteRequest) *chatRequest {
	req := &chatRequest{
		Model:       in.GetModel(),
		Messages:    make([]chatMessage, len(in.GetMessages())),
		MaxTokens:   int(in.GetMaxTokens()),
		Temperature: in.Temperature,
		TopP:        in.TopP,
		Logprobs:    in.GetLogprobs(),
		TopLogprobs: int(in.GetTopLogprobs()),
	}
	for i, m := range in.GetMessages() {
		cm := chatMessage{Role: m.GetRole(), Content: messageContent(m.GetContent()), ToolCallID: m.GetToolCallId(), Prefix: m.GetPrefix()}
		for _, tc := range m.GetToolCalls() {
			cm.ToolCalls = append(cm.ToolCalls, struct {
				ID string `json:"id"`
			}{tc.GetId()})
		}
		req.Messages[i] = cm
	}
	for _, t := range in.GetTools() {
		var ct chatTool
		ct.Type = t.GetType()
		ct.Function.Name = t.GetFunction().GetName()
		if p := t.GetFunction().GetParameters(); p != "" {
			ct.Function.Parameters = json.RawMessage(p)
		}
		req.Tools = append(req.Tools, ct)
	}
	switch c := in.GetToolChoice().GetChoice().(type) {
	case *detourv1.ToolChoice_Mode:
		req.ToolChoice, _ = json.Marshal(c.Mode)
	case *detourv1.ToolChoice_Function:
		req.ToolChoice, _ = json.Marshal(map[string]any{"type": "function", "function": map[string]string{"name": c.Function}})
	}
	if rf := in.GetResponseFormat(); rf != nil {
		req.ResponseFormat = &struct {
			Type string `json:"type"`
		}{rf.GetType()}
	}
	if th := in.GetThinking(); th != nil {
		req.Thinking = &struct {
			Type string `json:"type"`
		}{th.GetType()}
	}
	return req
}

// ended is the error of a call released before its answer: its context's,
// or errShutdown if the Server closed.
func (s *Server) ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return errShutdown
}

// Complete answers like POST /v1/chat/completions.
func (r routerService) Complete(ctx context.Context, in *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	s := r.s
	s.stats.begin()
	defer s.stats.end()
	req, snap, fate, err := s.admit(ctx, in)
	if err != nil {
		return nil, err
	}
	var timer *time.Timer
	if !s.sleep(ctx, &timer, snap.delay()+snap.ttft()) {
		s.stats.count(outcomeCanceled)
		return nil, s.ended(ctx)
	}
	s.stats.count(fate)
	switch fate {
	case outcomeGarbage:
		return nil, errGarbage
	case outcomeCut:
		return nil, errCut
	}
	ans := newAnswer(s.region, req, snap.answerOptions(req))
	s.stats.started(&ans)
	s.stats.sent(ans.completion())
	resp := &detourv1.CompleteResponse{
		Id:               ans.id,
		Model:            req.Model,
		Content:          ans.content,
		ReasoningContent: ans.reasoning,
		FinishReason:     ans.finish,
		Usage:            ans.usage(),
		ServedBy:         s.servedBy,
		Source:           detourv1.Source_SOURCE_LIVE,
		Attempts:         1,
	}
	if c := ans.call; c != nil {
		resp.ToolCalls = []*detourv1.ToolCall{{Id: c.id, Type: "function", Function: &detourv1.FunctionCall{Name: c.name, Arguments: c.args}}}
	}
	if ans.logprobs >= 0 && ans.pieces > 0 {
		resp.Logprobs = &detourv1.Logprobs{}
		rest := ans.content
		for i := range ans.pieces {
			var piece string
			piece, rest = nextPiece(rest)
			resp.Logprobs.Content = append(resp.Logprobs.Content, protoLogprob(piece, i, ans.logprobs))
		}
	}
	return resp, nil
}

// protoLogprob is the made-up log probability of the i-th token, as
// appendTokenLogprob writes it.
func protoLogprob(token string, i, top int) *detourv1.TokenLogprob {
	t := &detourv1.TokenLogprob{Token: token, Logprob: tokenLogprob(i, 0), Bytes: []byte(token)}
	for j := range top {
		alt := token
		if j > 0 {
			alt = token + "~" + strconv.Itoa(j)
		}
		t.TopLogprobs = append(t.TopLogprobs, &detourv1.TopLogprob{Token: alt, Logprob: tokenLogprob(i, j), Bytes: []byte(alt)})
	}
	return t
}

// StreamComplete answers like POST /v1/chat/completions with "stream":
// true: one chunk per token, the last with the finish reason and usage.
func (r routerService) StreamComplete(in *detourv1.CompleteRequest, stream grpc.ServerStreamingServer[detourv1.CompleteChunk]) error {
	s := r.s
	ctx := stream.Context()
	s.stats.begin()
	defer s.stats.end()
	req, snap, fate, err := s.admit(ctx, in)
	if err != nil {
		return err
	}
	var timer *time.Timer
	if !s.sleep(ctx, &timer, snap.delay()) {
		s.stats.count(outcomeCanceled)
		return s.ended(ctx)
	}
	ans := newAnswer(s.region, req, snap.answerOptions(req))
	s.stats.started(&ans)
	// Over gRPC nothing goes out before the first token.
	if !s.sleep(ctx, &timer, snap.ttft()) {
		s.stats.count(outcomeCanceled)
		return s.ended(ctx)
	}
	chunk := func() *detourv1.CompleteChunk {
		return &detourv1.CompleteChunk{Id: ans.id, Model: req.Model, ServedBy: s.servedBy, Source: detourv1.Source_SOURCE_LIVE, Attempts: 1}
	}
	think := snap.thinkInterval()
	rest := ans.reasoning
	for i := range ans.thoughts {
		if i > 0 && !s.sleep(ctx, &timer, think) {
			s.stats.count(outcomeCanceled)
			return s.ended(ctx)
		}
		c := chunk()
		c.ReasoningDelta, rest = nextPiece(rest)
		if err := stream.Send(c); err != nil {
			s.stats.count(outcomeCanceled)
			return err
		}
		s.stats.sent(1)
	}
	pieces := ans.pieces
	if ans.call != nil {
		pieces = 1 + ans.call.pieces() // the call's name, then its arguments
	}
	half := pieces / 2
	cut, clean := -1, false
	if fate == outcomeOK {
		cut, clean = snap.breakAt(pieces)
	}
	pause := snap.tokenInterval()
	rest = ans.content
	if pieces == 0 { // a prefix completion with nothing left to add
		c := chunk()
		c.FinishReason, c.Usage = ans.finish, ans.usage()
		s.stats.count(outcomeOK)
		return stream.Send(c)
	}
	for i := range pieces {
		if (i > 0 || ans.thoughts > 0) && !s.sleep(ctx, &timer, pause) {
			s.stats.count(outcomeCanceled)
			return s.ended(ctx)
		}
		if i == half {
			switch fate {
			case outcomeGarbage:
				s.stats.count(fate)
				return errGarbage
			case outcomeCut:
				s.stats.count(fate)
				return errCut
			}
		}
		if i == cut {
			s.stats.count(outcomeBroken)
			if clean {
				return nil // OK, without the last chunk
			}
			return errCut
		}
		c := chunk()
		switch {
		case ans.call != nil && i == 0:
			c.ToolCallDeltas = []*detourv1.ToolCallDelta{{Index: 0, Id: ans.call.id, Type: "function",
				Function: &detourv1.FunctionCall{Name: ans.call.name}}}
		case ans.call != nil:
			c.ToolCallDeltas = []*detourv1.ToolCallDelta{{Index: 0, Function: &detourv1.FunctionCall{
				Arguments: ans.call.args[(i-1)*argPiece : min(i*argPiece, len(ans.call.args))]}}}
		default:
			c.Delta, rest = nextPiece(rest)
			if ans.logprobs >= 0 {
				c.Logprobs = &detourv1.Logprobs{Content: []*detourv1.TokenLogprob{protoLogprob(c.Delta, i, ans.logprobs)}}
			}
		}
		if i == pieces-1 {
			c.FinishReason = ans.finish
			c.Usage = ans.usage()
			s.stats.count(outcomeOK)
		}
		if err := stream.Send(c); err != nil {
			if i < pieces-1 {
				s.stats.count(outcomeCanceled)
			}
			return err
		}
		s.stats.sent(1)
	}
	return nil
}

func (a *answer) usage() *detourv1.Usage {
	u := &detourv1.Usage{
		PromptTokens:          int32(a.prompt),
		CompletionTokens:      int32(a.completion()),
		TotalTokens:           int32(a.prompt + a.completion()),
		PromptCacheHitTokens:  proto.Int32(int32(a.cached)),
		PromptCacheMissTokens: proto.Int32(int32(a.prompt - a.cached)),
	}
	if a.thoughts > 0 {
		u.ReasoningTokens = proto.Int32(int32(a.thoughts))
	}
	return u
}
