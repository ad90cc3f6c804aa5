package provider

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

// Connection pool tuning for an OpenAI-compatible backend.
const (
	dialTimeout         = 5 * time.Second
	tlsHandshakeTimeout = 5 * time.Second
	idleConnTimeout     = 90 * time.Second
	maxIdleConnsPerHost = 256
)

// OpenAI is a client for one OpenAI-compatible chat completions backend
// (DeepSeek, vLLM, OpenAI, cmd/fakellm). It keeps its own pool of keep-alive
// connections, reads the API key once at construction and sends it as
// "Authorization: Bearer"; the key never appears in its errors.
//
// An OpenAI is safe for concurrent use. Its methods block on the network and
// return once ctx ends; it sets no timeout of its own except for dialing.
type OpenAI struct {
	name     string
	url      string // {endpoint}/chat/completions
	tenantAs string // the backend's send_tenant_as
	cred     *credential
	client   *http.Client
	tr       *http.Transport
	trace    *httptrace.ClientTrace // nil without WithConnReport
}

// Option configures a client.
type Option func(*OpenAI)

// WithConnReport calls report for every request with whether it reused a
// pooled connection (true) or dialed a new one, to measure pool use. report
// must not block.
func WithConnReport(report func(reused bool)) Option {
	return func(o *OpenAI) {
		o.trace = &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { report(i.Reused) }}
	}
}

// NewOpenAI returns a client for b, whose Endpoint is a base URL such as
// "http://127.0.0.1:8080/v1". b.Kind must be "openai" or empty. It reads the
// API key now; a key rotated later takes a new client. It opens no
// connection.
func NewOpenAI(b regions.Backend, opts ...Option) (*OpenAI, error) {
	if b.Kind != "" && b.Kind != regions.KindOpenAI {
		return nil, fmt.Errorf("backend %s: kind %q is not %q", b.Name, b.Kind, regions.KindOpenAI)
	}
	u, err := url.Parse(b.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("backend %s: endpoint: %w", b.Name, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("backend %s: endpoint %q must be an http:// or https:// URL", b.Name, b.Endpoint)
	}
	key, err := b.APIKey()
	if err != nil {
		return nil, fmt.Errorf("openai client: %w", err)
	}
	if !validKey(key) {
		return nil, fmt.Errorf("backend %s: api key holds characters not allowed in an HTTP header", b.Name)
	}
	var tlsConfig *tls.Config
	if b.TLS != nil {
		if tlsConfig, err = clientTLS(b); err != nil {
			return nil, err
		}
	}
	tr, err := newTransport(b, tlsConfig)
	if err != nil {
		return nil, err
	}
	o := &OpenAI{
		name:     b.Name,
		url:      strings.TrimRight(b.Endpoint, "/") + "/chat/completions",
		tenantAs: b.SendTenantAs,
		cred:     newCredential(key),
		client: &http.Client{
			Transport: tr,
			// A redirect is an answer we cannot use, and following one could
			// carry the key elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		tr: tr,
	}
	for _, opt := range opts {
		opt(o)
	}
	return o, nil
}

// newTransport builds the connection pool of b as its connections block
// says: HTTP/2 through ALPN over TLS (auto), h2c with prior knowledge, or
// HTTP/1.1 only; HTTP/1.1 is offered beside HTTP/2 except with h2c (which
// net/http takes as "h2c on http:// URLs").
func newTransport(b regions.Backend, tlsConfig *tls.Config) (*http.Transport, error) {
	c := regions.BackendConnections{}
	if b.Connections != nil {
		c = *b.Connections
	}
	var p http.Protocols
	switch c.Mode() {
	case regions.HTTP2Auto:
		p.SetHTTP1(true)
		p.SetHTTP2(true)
	case regions.HTTP2H2C:
		if strings.HasPrefix(b.Endpoint, "https://") {
			return nil, fmt.Errorf("backend %s: connections.http2 h2c needs an http:// endpoint, not %q", b.Name, b.Endpoint)
		}
		p.SetUnencryptedHTTP2(true)
		// Bounds the dials of a burst beyond the open connections' streams
		// (see regions.BackendConnections.MaxConns); HTTP/2 connections
		// already open are not counted.
		c.MaxConns = cmp.Or(c.MaxConns, regions.DefaultH2CMaxConns)
	case regions.HTTP2Off:
		p.SetHTTP1(true)
	default:
		return nil, fmt.Errorf("backend %s: connections.http2 %q must be %q, %q or %q", b.Name, c.HTTP2, regions.HTTP2Auto, regions.HTTP2H2C, regions.HTTP2Off)
	}
	idle := cmp.Or(c.IdleTimeout.D(), idleConnTimeout)
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		Protocols:             &p,
		TLSClientConfig:       tlsConfig, // nil: verified against the system roots
		MaxConnsPerHost:       c.MaxConns,
		MaxIdleConnsPerHost:   cmp.Or(c.MaxIdleConns, maxIdleConnsPerHost),
		IdleConnTimeout:       idle,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ExpectContinueTimeout: time.Second,
		HTTP2: &http.HTTP2Config{
			// Zero: no pings. PingTimeout's own zero would be 15s.
			SendPingTimeout: c.PingTimeout.D(),
			PingTimeout:     c.PingTimeout.D(),
		},
	}
	return tr, nil
}

// Close closes the idle connections of the pool. Calls in flight are not
// interrupted; cancel their contexts to end them.
func (o *OpenAI) Close() error {
	o.tr.CloseIdleConnections()
	return nil
}

// Complete sends req to the backend's /chat/completions and returns the
// first choice. It leaves ServedBy, Source and Attempts for the caller to
// set. Empty lines before the answer (keep-alives of a queued request) go to
// ctx's Progress. A JSON-mode answer with blank content is an error
// wrapping ErrBlankJSON.
func (o *OpenAI) Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	resp, err := o.post(ctx, req, false)
	if err != nil {
		return nil, err
	}
	defer release(resp.Body)
	if p := progressFrom(ctx); !isNoProgress(p) {
		resp.Body = &keepAliveBody{ReadCloser: resp.Body, p: p}
	}
	var h hold
	defer h.release() // once decoded: the answer holds copies
	body, err := readCapped(resp, maxAnswerBytes, &h)
	if err != nil {
		switch {
		case errors.Is(err, errTooLarge):
			return nil, o.malformed(resp.StatusCode, err.Error())
		case errors.Is(err, ErrBodyBudget):
			return nil, o.overBudget(resp.StatusCode, err)
		}
		return nil, o.readError(ctx, "reading answer", err)
	}
	out, problem := decodeAnswer(body)
	if out == nil {
		return nil, o.malformed(resp.StatusCode, problem)
	}
	if blankAnswer(req, out) {
		return nil, &HTTPError{Backend: o.name, Status: resp.StatusCode, Err: ErrBlankJSON}
	}
	return out, nil
}

// keepAliveBody tells a Progress about the whitespace that comes before a
// unary answer, and about the answer's first byte.
type keepAliveBody struct {
	io.ReadCloser
	p       Progress
	started bool
}

func (k *keepAliveBody) Read(b []byte) (int, error) {
	n, err := k.ReadCloser.Read(b)
	if n > 0 && !k.started {
		if firstNonSpace(b[:n]) >= 0 {
			k.started = true
			k.p.Answering()
		} else {
			k.p.KeepAlive()
		}
	}
	return n, err
}

// Stream sends req with "stream": true and returns once the backend has
// answered with a 2xx status; the chunks follow through the stream. The
// stream ends with io.EOF only after the backend's "data: [DONE]" and a
// finish reason; an answer cut before [DONE], or a [DONE] that no finish
// reason preceded, is an error wrapping ErrIncomplete. Events that carry
// nothing (a role-only first delta, say) are skipped; they, SSE comments
// (": keep-alive") and empty lines go to ctx's Progress as keep-alives. In
// JSON mode, the whitespace an answer starts with is held back until
// non-blank content or a tool call follows, and a stream that finishes blank
// fails with ErrBlankJSON.
// After [DONE], Recv reads the end of the response (normally already there)
// so that the connection goes back to the pool. The caller must Close the
// stream.
func (o *OpenAI) Stream(ctx context.Context, req *detourv1.CompleteRequest) (ChunkStream, error) {
	resp, err := o.post(ctx, req, true)
	if err != nil {
		return nil, err
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		if mt, _, _ := mime.ParseMediaType(ct); mt != "text/event-stream" {
			defer release(resp.Body)
			msg := fmt.Sprintf("content type %q, not text/event-stream", mt)
			var h hold
			defer h.release()
			if body, err := readCapped(resp, maxErrorBytes, &h); err == nil && len(body) > 0 {
				msg += "; upstream said: " + upstreamMessage(body)
			}
			return nil, o.malformed(resp.StatusCode, msg)
		}
	}
	p := progressFrom(ctx)
	st := &openAIStream{
		o:      o,
		ctx:    ctx,
		status: resp.StatusCode,
		body:   resp.Body,
		alive:  p,
		guard:  blankGuard{on: jsonMode(req)},
	}
	st.sse = newSSEReader(resp.Body, maxEventBytes, &st.hold)
	if !isNoProgress(p) {
		st.sse.alive = p.KeepAlive
	}
	return st, nil
}

// post sends req and returns a 2xx response, or the error status as an
// *HTTPError.
func (o *OpenAI) post(ctx context.Context, req *detourv1.CompleteRequest, stream bool) (*http.Response, error) {
	body, err := encodeChatRequest(req, stream, o.tenantAs, auth.TenantFrom(ctx))
	if err != nil {
		return nil, fmt.Errorf("backend %s: encoding request: %w", o.name, err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, o.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", o.name, err)
	}
	hr.Header["Content-Type"] = []string{"application/json"}
	hr.Header["User-Agent"] = []string{"detour"}
	if stream {
		hr.Header["Accept"] = []string{"text/event-stream"}
	} else {
		hr.Header["Accept"] = []string{"application/json"}
	}
	if o.cred != nil {
		hr.Header["Authorization"] = []string{o.cred.bearer}
	}
	injectTrace(ctx, hr.Header.Set)
	if o.trace != nil {
		hr = hr.WithContext(httptrace.WithClientTrace(ctx, o.trace))
	}
	resp, err := o.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", o.name, err)
	}
	if resp.StatusCode/100 != 2 {
		defer release(resp.Body)
		return nil, o.statusError(resp)
	}
	progressFrom(ctx).KeepAlive() // the headers: the upstream has the call
	return resp, nil
}

// statusError turns an error status into an *HTTPError.
func (o *OpenAI) statusError(resp *http.Response) error {
	e := &HTTPError{
		Backend:     o.name,
		Status:      resp.StatusCode,
		RetryAfterD: retryAfter(resp.Header, time.Now()),
	}
	// A body cut by ctx still says something; use what arrived. A body the
	// budget cannot take leaves the status alone to speak.
	var h hold
	defer h.release()
	body, _ := readCapped(resp, maxErrorBytes, &h)
	if len(body) > 0 {
		e.Message = cleanMessage(upstreamMessage(body), o.cred)
	}
	return e
}

// malformed reports an unusable answer that came with a 2xx status.
func (o *OpenAI) malformed(status int, msg string) error {
	return &HTTPError{Backend: o.name, Status: status, Message: cleanMessage(msg, o.cred), Err: ErrMalformed}
}

// readError wraps an error met while reading a body. When ctx has ended, the
// ctx error is the one wrapped, so that an attempt timeout classifies as Busy
// and a caller's cancellation as Canceled whatever the transport reported.
func (o *OpenAI) readError(ctx context.Context, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("backend %s: %s: %w (%v)", o.name, what, ctxErr, err)
	}
	return fmt.Errorf("backend %s: %s: %w", o.name, what, err)
}

var errTooLarge = errors.New("answer too large")

// readChunk is the least a body's buffer grows by.
const readChunk = 32 << 10

// readCapped reads resp.Body whole, up to limit bytes, reserving the
// buffer's bytes in h (the process budget, see SetBodyBudget) before it
// grows: a body larger than limit is errTooLarge, one the budget cannot
// hold wraps ErrBodyBudget. On any error the bytes read so far are
// returned too. The caller releases h once done with the bytes.
func readCapped(resp *http.Response, limit int64, h *hold) ([]byte, error) {
	size := int64(readChunk)
	if n := resp.ContentLength; n >= 0 && n <= limit {
		size = n + 1 // one more, to see the end without growing
	}
	size = min(size, limit+1)
	if !h.grow(size) {
		return nil, overBudget(size)
	}
	buf := make([]byte, 0, size)
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return nil, fmt.Errorf("%w: over %d bytes", errTooLarge, limit)
			}
			grow := min(max(int64(cap(buf)), readChunk), limit+1-int64(cap(buf)))
			if !h.grow(grow) {
				return buf, overBudget(grow)
			}
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return nil, fmt.Errorf("%w: over %d bytes", errTooLarge, limit)
		}
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// overBudget reports an answer of status that the process's body budget
// could not hold (err wraps a *budgetError): Failed, like a malformed
// answer.
func (o *OpenAI) overBudget(status int, err error) error {
	msg := err.Error()
	var be *budgetError
	if errors.As(err, &be) {
		msg = be.detail
	}
	return &HTTPError{Backend: o.name, Status: status, Message: msg, Err: ErrBodyBudget}
}

// release drains a little of what is left of body, so that the connection
// can go back to the pool, and closes it.
func release(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, maxDrainBytes)
	_ = body.Close()
}

// openAIStream reads chat completion chunks from a Server-Sent Events body.
type openAIStream struct {
	o      *OpenAI
	ctx    context.Context // the request's; tells an attempt timeout from a cut
	status int
	body   io.ReadCloser
	sse    *sseReader
	alive  Progress
	guard  blankGuard
	hold   hold  // the stream's event buffers in the process budget
	err    error // sticky: io.EOF after [DONE], or what broke the stream

	finished bool // an event carried a finish reason

	closeOnce sync.Once
}

func (s *openAIStream) Recv() (*detourv1.CompleteChunk, error) {
	if s.err != nil {
		return nil, s.err
	}
	for {
		data, err := s.sse.Next()
		if err != nil {
			return nil, s.fail(s.streamError(err))
		}
		if len(data) == 0 {
			continue
		}
		if string(data) == "[DONE]" {
			if !s.finished {
				// A [DONE] without a finish reason ends an answer that
				// did not finish: never a complete (cacheable) one.
				return nil, s.fail(fmt.Errorf("backend %s: %w: [DONE] without a finish reason", s.o.name, ErrIncomplete))
			}
			if err := s.guard.end(); err != nil {
				return nil, s.fail(&HTTPError{Backend: s.o.name, Status: s.status, Err: err})
			}
			// Read to the end of the body, which normally follows at once, so
			// that the connection is reused; ctx bounds the wait.
			_, _ = io.CopyN(io.Discard, s.sse.br, maxDrainBytes)
			s.err = io.EOF
			s.Close()
			return nil, io.EOF
		}
		ch, upstreamErr, err := decodeChunk(data)
		if err != nil {
			return nil, s.fail(s.o.malformed(s.status, "stream event: "+err.Error()))
		}
		if upstreamErr {
			// No %w: there is no cause to unwrap, and the upstream's words
			// ("overloaded") decide whether breaker.Classify calls it Busy.
			return nil, s.fail(fmt.Errorf("backend %s: error event in stream: %s",
				s.o.name, cleanMessage(upstreamMessage(data), s.o.cred)))
		}
		if err := s.guard.check(ch); err != nil {
			return nil, s.fail(&HTTPError{Backend: s.o.name, Status: s.status, Err: err})
		}
		if emptyChunk(ch) {
			s.alive.KeepAlive()
			continue
		}
		if ch.FinishReason != "" {
			s.finished = true
		}
		return ch, nil
	}
}

// streamError says why the event stream stopped before [DONE].
func (s *openAIStream) streamError(err error) error {
	switch {
	case s.ctx.Err() != nil:
		return s.o.readError(s.ctx, "stream", err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("backend %s: %w: cut before [DONE]", s.o.name, ErrIncomplete)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("backend %s: %w: cut before [DONE]: %w", s.o.name, ErrIncomplete, err)
	case errors.Is(err, errEventTooLarge):
		return s.o.malformed(s.status, "stream: "+err.Error())
	case errors.Is(err, ErrBodyBudget):
		return s.o.overBudget(s.status, err)
	}
	return s.o.readError(s.ctx, "stream", err)
}

// fail records err as the stream's end and releases the connection.
func (s *openAIStream) fail(err error) error {
	s.err = err
	s.Close()
	return err
}

func (s *openAIStream) Close() error {
	s.closeOnce.Do(func() {
		_ = s.body.Close()
		s.hold.release()
	})
	return nil
}
