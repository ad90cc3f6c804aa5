package fakellm

import (
	"context"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// gRPC errors of the fake. They are immutable and shared.
var (
	errBusy      = status.Error(codes.Unavailable, "server busy, please retry later")
	errRateLimit = mustDetails(status.New(codes.ResourceExhausted, "rate limit reached, please retry later"),
		&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
	errGarbage  = status.Error(codes.Internal, "fakellm: malformed response message")
	errCut      = status.Error(codes.Unavailable, "fakellm: connection cut")
	errShutdown = status.Error(codes.Unavailable, "fakellm: server shutting down")
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
	req := &chatRequest{
		Model:       in.GetModel(),
		Messages:    make([]chatMessage, len(in.GetMessages())),
		MaxTokens:   int(in.GetMaxTokens()),
		Temperature: in.Temperature,
		TopP:        in.TopP,
	}
	for i, m := range in.GetMessages() {
		req.Messages[i] = chatMessage{Role: m.GetRole(), Content: messageContent(m.GetContent())}
	}
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
	case outcomeHang:
		s.stats.count(fate)
		s.hang(ctx)
		return nil, nil, fate, s.ended(ctx)
	}
	return req, snap, fate, nil
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
	if !s.sleep(ctx, &timer, snap.delay()) {
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
	ans := newAnswer(s.region, req)
	return &detourv1.CompleteResponse{
		Id:           ans.id,
		Model:        req.Model,
		Content:      ans.content,
		FinishReason: ans.finish,
		Usage:        ans.usage(),
		ServedBy:     s.servedBy,
		Source:       detourv1.Source_SOURCE_LIVE,
		Attempts:     1,
	}, nil
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
	ans := newAnswer(s.region, req)
	half := ans.pieces / 2
	pause := snap.tokenInterval()
	rest := ans.content
	for i := range ans.pieces {
		if i > 0 && !s.sleep(ctx, &timer, pause) {
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
		var piece string
		piece, rest = nextPiece(rest)
		c := &detourv1.CompleteChunk{
			Id:       ans.id,
			Model:    req.Model,
			Delta:    piece,
			ServedBy: s.servedBy,
			Source:   detourv1.Source_SOURCE_LIVE,
			Attempts: 1,
		}
		if i == ans.pieces-1 {
			c.FinishReason = ans.finish
			c.Usage = ans.usage()
			s.stats.count(outcomeOK)
		}
		if err := stream.Send(c); err != nil {
			if i < ans.pieces-1 {
				s.stats.count(outcomeCanceled)
			}
			return err
		}
	}
	return nil
}

func (a *answer) usage() *detourv1.Usage {
	return &detourv1.Usage{
		PromptTokens:     int32(a.prompt),
		CompletionTokens: int32(a.pieces),
		TotalTokens:      int32(a.prompt + a.pieces),
	}
}
