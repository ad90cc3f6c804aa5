// Package provider holds detour's upstream clients: OpenAI-compatible HTTP
// chat completions (unary and Server-Sent Events streaming) and other detour
// instances speaking detour.v1.Router over gRPC.
//
// There is one client per configured backend. A client owns its connection
// pool (one tuned *http.Transport, or one *grpc.ClientConn), is safe for
// concurrent use, and is released with Close. The HTTP pool follows the
// backend's connections block: HTTP/2 through ALPN over TLS by default, h2c
// when asked, HTTP/1.1 otherwise; over HTTP/2 many calls share a
// connection (one goroutine each inside net/http, beside the caller's):
//
//	p, err := provider.NewOpenAI(backend)
//	if err != nil {
//		return err
//	}
//	defer p.Close()
//
//	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
//	defer cancel()
//	resp, err := p.Complete(ctx, req)
//	switch breaker.Classify(err) {
//	case breaker.Busy: // try another backend, honouring breaker.RetryAfter(err)
//	}
//
// Memory is bounded per call (a unary body of 16 MiB, a stream event of
// 4 MiB) and for the whole process: the bytes every client holds of
// upstream bodies at once, while a unary answer is read and decoded and
// while a stream's event buffers are open, come from one budget (SetBodyBudget,
// DefaultBodyBudget). A body that would pass it fails its attempt with an
// error wrapping ErrBodyBudget, class Failed. gRPC (detour) backends are
// bounded per message only.
//
// Clients apply no timeouts of their own beyond a short dial timeout: the
// caller bounds each attempt with ctx, and every call, including a blocked
// ChunkStream.Recv, returns promptly once ctx ends. To bound an attempt by
// silence rather than by a deadline, the caller puts a Progress in ctx
// (WithProgress): the OpenAI client reports the response headers, the
// empty lines a provider sends before a unary answer while the request is
// queued, and SSE comments (": keep-alive") and empty events in a stream;
// every chunk Recv returns is a sign of life too.
//
// Every field of detour.v1 maps to the OpenAI/DeepSeek JSON and back
// (reasoning, tool calls and their streamed pieces, logprobs, cache-hit and
// reasoning usage); extra_body's members are added to the JSON body as
// written (CheckExtraBody). A detour backend gets the request as it is.
// Both clients send the caller's tenant (auth.WithTenant) upstream when the
// backend's send_tenant_as says so, and fail a JSON-mode answer whose
// content is blank with ErrBlankJSON.
//
// Errors are shaped for breaker.Classify. An HTTP error status is an
// *HTTPError (StatusCode, RetryAfter); a 2xx answer that cannot be used is an
// *HTTPError with that 2xx status wrapping ErrMalformed (class Failed), and
// so is an answer with neither content nor a finish reason; a stream that
// ends before its "data: [DONE]", or without any finish reason, wraps
// ErrIncomplete (Failed); a gRPC backend's status is wrapped in an *RPCError
// that status.FromError still sees (RetryAfter from errdetails.RetryInfo);
// transport errors and ctx errors are wrapped with %w so that refused or
// reset connections and deadlines classify as Busy. Every error names its
// backend. An error quotes an upstream only as a one-line excerpt of a few
// hundred bytes, marked when clipped, with the backend's API key and
// anything else that looks like a credential replaced (package
// internal/excerpt).
package provider
