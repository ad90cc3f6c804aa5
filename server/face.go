package server

import (
	"context"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// The path every call takes, whichever face it came in by (gRPC or the
// OpenAI-compatible HTTP face): begin (validation, tenant, request id,
// hops), the router, the one status table (toStatus), and end (metrics and
// the call line). A face brings the request as a detour.v1 message and a
// context holding its caller's incoming metadata (x-detour-tenant,
// x-request-id, the hop count) and, with authentication on, the caller's
// auth.Identity; it turns the status it gets back into its own wire form.
// method is the call's label in metrics and the call line.

// complete runs one unary call.
func (s *Server) complete(ctx context.Context, method string, req *detourv1.CompleteRequest) (resp *detourv1.CompleteResponse, err error) {
	c := s.begin(ctx, method, req)
	defer func() { c.end(resp.GetSource(), resp.GetServedBy(), resp.GetAttempts(), resp.GetUsage(), err) }()
	if err := c.err; err != nil {
		return nil, err
	}
	resp, err = s.router.Complete(c.ctx, req)
	if err != nil {
		c.routed = err
		return nil, s.cutOr(toStatus(s.log, err))
	}
	return resp, nil
}

// stream runs one streamed call, passing each chunk to send on the calling
// goroutine.
func (s *Server) stream(ctx context.Context, method string, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) (err error) {
	c := s.begin(ctx, method, req)
	c.streamed = true
	var first *detourv1.CompleteChunk
	var usage *detourv1.Usage
	defer func() { c.end(first.GetSource(), first.GetServedBy(), first.GetAttempts(), usage, err) }()
	if err := c.err; err != nil {
		return err
	}
	return s.cutOr(toStatus(s.log, c.route(s.router.Stream(c.ctx, req, func(ch *detourv1.CompleteChunk) error {
		if first == nil {
			first = ch
		}
		if ch.Usage != nil {
			usage = ch.Usage
		}
		return send(ch)
	}))))
}
