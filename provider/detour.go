package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/hop"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// Detour is a client for one gRPC backend speaking detour.v1.Router (another
// detour deployment, or a model server that implements the service). It
// keeps one *grpc.ClientConn, which does its own connection management, and
// sends the API key, if any, as "authorization: Bearer" metadata.
//
// A Detour is safe for concurrent use. Its methods block on the network and
// return once ctx ends.
type Detour struct {
	name       string
	conn       *grpc.ClientConn
	client     detourv1.RouterClient
	cred       *credential
	sendTenant bool // the backend's send_tenant_as is set
}

// NewDetour returns a client for b, whose Endpoint is "host:port" or
// "dns:///host:port". b.Kind must be "detour" or empty. It reads the API key
// now and starts connecting in the background; Close stops that.
func NewDetour(b regions.Backend) (*Detour, error) {
	if b.Kind != "" && b.Kind != regions.KindDetour {
		return nil, fmt.Errorf("backend %s: kind %q is not %q", b.Name, b.Kind, regions.KindDetour)
	}
	if b.Endpoint == "" {
		return nil, fmt.Errorf("backend %s: endpoint is required", b.Name)
	}
	key, err := b.APIKey()
	if err != nil {
		return nil, fmt.Errorf("detour client: %w", err)
	}
	if !validKey(key) {
		return nil, fmt.Errorf("backend %s: api key holds characters not allowed in gRPC metadata", b.Name)
	}
	creds, err := transportCredentials(b)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(b.Endpoint,
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent("detour"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxAnswerBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", b.Name, err)
	}
	conn.Connect()
	return &Detour{
		name:       b.Name,
		conn:       conn,
		client:     detourv1.NewRouterClient(conn),
		cred:       newCredential(key),
		sendTenant: b.SendTenantAs != "",
	}, nil
}

// transportCredentials verifies the backend with TLS when its config has a
// tls block, and is plaintext otherwise (a detour in the same cluster behind
// a mesh, or a local model server).
func transportCredentials(b regions.Backend) (credentials.TransportCredentials, error) {
	if b.TLS == nil {
		return insecure.NewCredentials(), nil
	}
	cfg, err := clientTLS(b)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// Close closes the connection. Calls in flight end with a Canceled status.
func (d *Detour) Close() error {
	if err := d.conn.Close(); err != nil {
		return fmt.Errorf("backend %s: %w", d.name, err)
	}
	return nil
}

// Complete calls Router.Complete on the backend and returns its answer as it
// came, served_by and source included: every field passes through unchanged,
// both ways. A JSON-mode answer with blank content is an error wrapping
// ErrBlankJSON.
func (d *Detour) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	resp, err := d.client.Complete(d.outgoing(ctx), d.request(ctx, req))
	if err != nil {
		return nil, d.wrap(err)
	}
	if resp.GetContent() == "" && resp.GetFinishReason() == "" {
		return nil, fmt.Errorf("backend %s: %w: no content and no finish reason", d.name, ErrMalformed)
	}
	if blankAnswer(req, resp) {
		return nil, fmt.Errorf("backend %s: %w", d.name, ErrBlankJSON)
	}
	return resp, nil
}

// Stream calls Router.StreamComplete on the backend. Errors, including the
// backend's refusal, usually surface on the first Recv. The caller must Close
// the stream. Chunks pass through unchanged, except that in JSON mode the
// whitespace an answer starts with is held back as OpenAI's Stream does.
func (d *Detour) Stream(ctx context.Context, req *detourv1.CompleteRequest) (ChunkStream, error) {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	st, err := d.client.StreamComplete(d.outgoing(ctx), d.request(ctx, req))
	if err != nil {
		cancel()
		return nil, d.wrap(err)
	}
	return &detourStream{d: d, st: st, cancel: cancel, parent: parent, guard: blankGuard{on: jsonMode(req)}}, nil
}

// request is req as sent to the backend: with the caller's tenant as its
// user when the backend says so (a copy; req is shared).
func (d *Detour) request(ctx context.Context, req *detourv1.CompleteRequest) *detourv1.CompleteRequest {
	if !d.sendTenant {
		return req
	}
	t := auth.TenantFrom(ctx)
	if t == "" || t == req.GetUser() {
		return req
	}
	out := proto.CloneOf(req)
	out.User = t
	return out
}

// outgoing adds the call's metadata: trace context, the hop count (one
// more than the call this one serves, so that a routing loop ends at the
// limit of the detour it leads back to) and the key.
func (d *Detour) outgoing(ctx context.Context) context.Context {
	ctx = outgoingTrace(ctx)
	if d.cred == nil {
		return metadata.AppendToOutgoingContext(ctx, hop.Key, hop.Next(ctx))
	}
	return metadata.AppendToOutgoingContext(ctx, hop.Key, hop.Next(ctx), "authorization", d.cred.bearer)
}

// wrap names the backend in a gRPC error, makes its message a clean
// excerpt (the key and anything like a credential removed, clipped; see
// cleanMessage) and lifts its RetryInfo.
func (d *Detour) wrap(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("backend %s: %w", d.name, err)
	}
	if msg := cleanMessage(s.Message(), d.cred); msg != s.Message() {
		p := s.Proto()
		p.Message = msg
		s = status.FromProto(p)
		err = s.Err()
	}
	return &RPCError{Backend: d.name, Err: err, RetryAfterD: retryInfo(s)}
}

// detourStream adapts a Router.StreamComplete client stream.
type detourStream struct {
	d        *Detour
	st       grpc.ServerStreamingClient[detourv1.CompleteChunk]
	cancel   context.CancelFunc
	parent   context.Context // the attempt's context, to tell a cut stream from a complete one
	finished bool            // a chunk carried a finish reason
	guard    blankGuard
}

// deadlineSlack is how close to the attempt's deadline a stream that ends
// without a finish reason counts as cut by that deadline: the upstream gets
// the same deadline (grpc-timeout) and may give up a moment before we do.
const deadlineSlack = 50 * time.Millisecond

func (s *detourStream) Recv() (*detourv1.CompleteChunk, error) {
	for {
		c, err := s.st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// An upstream that gives up at our deadline may end the stream
				// cleanly; the answer is still cut short.
				if cerr := s.parent.Err(); cerr != nil {
					return nil, fmt.Errorf("backend %s: stream ended as the attempt expired: %w", s.d.name, cerr)
				}
				if dl, ok := s.parent.Deadline(); ok && !s.finished && time.Until(dl) < deadlineSlack {
					return nil, fmt.Errorf("backend %s: stream ended at the attempt's deadline: %w", s.d.name, context.DeadlineExceeded)
				}
				if !s.finished {
					return nil, fmt.Errorf("backend %s: %w: ended without a finish reason", s.d.name, ErrIncomplete)
				}
				if err := s.guard.end(); err != nil {
					return nil, fmt.Errorf("backend %s: %w", s.d.name, err)
				}
				return nil, io.EOF
			}
			return nil, s.d.wrap(err)
		}
		if c.GetFinishReason() != "" {
			s.finished = true
		}
		if err := s.guard.check(c); err != nil {
			return nil, fmt.Errorf("backend %s: %w", s.d.name, err)
		}
		if s.guard.on && emptyChunk(c) {
			continue // held-back whitespace, nothing else
		}
		return c, nil
	}
}

func (s *detourStream) Close() error {
	s.cancel()
	return nil
}
