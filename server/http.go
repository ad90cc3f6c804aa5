package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/chatwire"
	"github.com/detour-dev/detour/internal/excerpt"
	"github.com/detour-dev/detour/internal/hop"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// The OpenAI-compatible HTTP face: POST /v1/chat/completions (unary JSON,
// or server-sent events with "stream": true) and GET /v1/models. A request
// takes the gRPC face's path (face.go): the same admission (one in-flight
// count for both faces), authentication (auth.Authenticator, from the
// Authorization header and the connection's client certificate), begin's
// validation, the router, the status table and the call line. Only the
// wire differs: the JSON is mapped to detour.v1 by internal/chatwire, and a
// status becomes OpenAI's error JSON through httpOf (status.go).

// Defaults of HTTPOptions.
const (
	// DefaultReadHeaderTimeout bounds the reading of a request's headers:
	// a client that sends them slowly (slowloris) loses its connection.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds the reading of a whole request, body
	// included (at most limits.max_request_bytes).
	DefaultReadTimeout = time.Minute
	// DefaultIdleTimeout closes a keep-alive connection idle this long.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxHeaderBytes bounds a request's headers, as
	// auth.DefaultMaxHeaderListBytes bounds a gRPC call's metadata.
	DefaultMaxHeaderBytes = 16 << 10
)

// Header names of the HTTP face.
const (
	// HeaderServedBy is "region/backend" of the backend that answered.
	HeaderServedBy = "X-Detour-Served-By"
	// HeaderSource is live, cache, stale_cache or fallback.
	HeaderSource = "X-Detour-Source"
	// HeaderAttempts counts the upstream calls made for the answer.
	HeaderAttempts = "X-Detour-Attempts"
)

// HTTPOptions configure the HTTP face. The zero value serves plaintext
// with authentication off and the default timeouts.
type HTTPOptions struct {
	// Auth identifies callers, as on the gRPC listener: a bearer token in
	// the Authorization header, or the client certificate of a TLS
	// connection. Nil means authentication off: the tenant is the
	// x-detour-tenant header's, or "default".
	Auth *auth.Authenticator
	// TLS, when set, serves HTTPS (HTTP/2 and HTTP/1.1) with this config;
	// auth.ServerTLS.Config gives the gRPC listener's certificates and
	// client CAs.
	TLS *tls.Config
	// ReadHeaderTimeout, ReadTimeout and IdleTimeout: zero means the
	// defaults above. There is no write timeout: a stream lasts as long as
	// its answer, within the call's deadline (limits.default_deadline).
	ReadHeaderTimeout, ReadTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes: zero means DefaultMaxHeaderBytes.
	MaxHeaderBytes int
}

// HTTPServer is the HTTP face of a Server. It is safe for concurrent use.
type HTTPServer struct {
	s    *Server
	auth *auth.Authenticator
	srv  *http.Server
	tls  *tls.Config
}

// NewHTTP returns the HTTP face of s. Serve it on a listener; Shutdown ends
// it.
func (s *Server) NewHTTP(opts HTTPOptions) *HTTPServer {
	def := func(v, d time.Duration) time.Duration {
		if v <= 0 {
			return d
		}
		return v
	}
	h := &HTTPServer{s: s, auth: opts.Auth}
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	h.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: def(opts.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		ReadTimeout:       def(opts.ReadTimeout, DefaultReadTimeout),
		IdleTimeout:       def(opts.IdleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ErrorLog:          slogErrorLog(s.log),
	}
	if opts.TLS != nil {
		h.tls = withALPN(opts.TLS)
		h.srv.TLSConfig = h.tls
	}
	return h
}

// withALPN returns a copy of cfg that offers HTTP/2 and HTTP/1.1, also in
// the configs its GetConfigForClient returns (auth.ServerTLS chooses the
// config per handshake).
func withALPN(cfg *tls.Config) *tls.Config {
	protos := []string{"h2", "http/1.1"}
	out := cfg.Clone()
	out.NextProtos = protos
	if get := cfg.GetConfigForClient; get != nil {
		out.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			if err != nil || c == nil {
				return c, err
			}
			c = c.Clone()
			c.NextProtos = protos
			return c, nil
		}
	}
	return out
}

// Serve accepts connections on lis until Shutdown. It returns nil after
// Shutdown.
func (h *HTTPServer) Serve(lis net.Listener) error {
	var err error
	if h.tls != nil {
		err = h.srv.ServeTLS(lis, "", "")
	} else {
		err = h.srv.Serve(lis)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests and waits for those in flight (streams
// included) to end. When ctx ends first, the remaining ones are cut, and
// logged as cut by shutdown.
func (h *HTTPServer) Shutdown(ctx context.Context) {
	if h.srv.Shutdown(ctx) != nil {
		h.s.cut.Store(true)
		h.srv.Close()
	}
}

// ServeHTTP implements http.Handler.
func (h *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/chat/completions":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeErrorJSON(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "", "POST /v1/chat/completions only")
			return
		}
		h.chat(w, r)
	case "/v1/models":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", http.MethodGet)
			writeErrorJSON(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "", "GET /v1/models only")
			return
		}
		h.models(w, r)
	default:
		writeErrorJSON(w, http.StatusNotFound, "not_found_error", "not_found", "",
			fmt.Sprintf("no such endpoint %s %s: detour serves POST /v1/chat/completions and GET /v1/models", r.Method, excerpt.Clip(r.URL.Path, 64)))
	}
}

// Methods of the HTTP face in metrics and the call line.
const (
	httpComplete = "http.Complete"
	httpStream   = "http.StreamComplete"
)

// bodyPool holds request and answer buffers.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// maxPooledBody bounds the buffers kept in bodyPool.
const maxPooledBody = 256 << 10

func putBody(bp *[]byte, b []byte) {
	if cap(b) <= maxPooledBody {
		*bp = b[:0]
		bodyPool.Put(bp)
	}
}

// chat serves POST /v1/chat/completions.
func (h *HTTPServer) chat(w http.ResponseWriter, r *http.Request) {
	s := h.s
	sent := false // the answer's status line is written
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("panic in handler", "method", httpComplete, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if !sent {
				writeStatus(w, status.Error(codes.Internal, "internal error"))
			}
		}
	}()
	// Admission first, as the gRPC tap does: a refused call costs no body
	// read, no authentication and no decoding.
	limit := s.admit.limit()
	if !s.admit.acquire(limit) {
		writeStatus(w, s.admit.shed(httpComplete, limit))
		return
	}
	defer s.admit.release()

	lim := s.limits()
	ctx, cancel := context.WithTimeout(r.Context(), lim.deadline)
	defer cancel()
	reqID := r.Header.Get(RequestIDKey)
	if reqID == "" || len(reqID) > 128 {
		reqID = newRequestID()
	}
	w.Header()["X-Request-Id"] = []string{reqID}
	ctx, err := h.identify(ctx, r, reqID)
	if err != nil {
		writeStatus(w, err)
		return
	}

	bp := bodyPool.Get().(*[]byte)
	body, err := readBody(http.MaxBytesReader(w, r.Body, int64(lim.requestBytes)), (*bp)[:0])
	if err != nil {
		putBody(bp, body)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeErrorJSON(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "",
				fmt.Sprintf("the body is over limits.max_request_bytes (%d bytes)", lim.requestBytes))
			return
		}
		writeErrorJSON(w, http.StatusBadRequest, "invalid_request_error", "invalid_argument", "", "cannot read the body: "+excerpt.Clip(err.Error(), 128))
		return
	}
	cr, extra, err := chatwire.DecodeRequest(body)
	putBody(bp, body)
	var req *detourv1.CompleteRequest
	if err == nil {
		req, err = cr.Proto(extra)
	}
	if err != nil {
		msg, param := chatwire.Describe(err)
		writeErrorJSON(w, http.StatusBadRequest, "invalid_request_error", "invalid_argument", param, excerpt.Clip(msg, maxMessageBytes))
		return
	}
	if err := auth.CheckModel(ctx, req.GetModel()); err != nil {
		writeStatus(w, err)
		return
	}
	created := time.Now().Unix()
	if !cr.Stream {
		resp, err := s.complete(ctx, httpComplete, req)
		if err != nil {
			writeStatus(w, err)
			return
		}
		setExtras(w.Header(), resp.GetServedBy(), resp.GetSource(), resp.GetAttempts())
		sent = true
		writeJSON(w, http.StatusOK, chatwire.NewResponse(resp, created))
		return
	}
	sse := &sseWriter{w: w, rc: http.NewResponseController(w), created: created,
		usage: cr.StreamOptions != nil && cr.StreamOptions.IncludeUsage}
	err = s.stream(ctx, httpStream, req, sse.send)
	sent = sse.started
	sse.end(err)
}

// identify authenticates the caller of r, as the gRPC interceptors do, and
// returns the context the call runs in: its incoming metadata holds the
// headers begin reads (x-detour-tenant, x-request-id, x-detour-hops) and
// the caller's auth.Identity, never its token.
func (h *HTTPServer) identify(ctx context.Context, r *http.Request, reqID string) (context.Context, error) {
	md := metadata.MD{RequestIDKey: []string{reqID}}
	if v := r.Header.Values(auth.TenantKey); len(v) > 0 {
		md[auth.TenantKey] = v
	}
	if v := r.Header.Get(hop.Key); v != "" {
		md[hop.Key] = []string{v}
	}
	p := &peer.Peer{Addr: remoteAddr(r.RemoteAddr)}
	if r.TLS != nil {
		p.AuthInfo = credentials.TLSInfo{State: *r.TLS, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	}
	ctx = peer.NewContext(metadata.NewIncomingContext(ctx, md), p)
	if h.auth == nil {
		return ctx, nil
	}
	actx := ctx
	if v := r.Header.Values("Authorization"); len(v) > 0 {
		amd := md.Copy()
		amd["authorization"] = v
		actx = metadata.NewIncomingContext(ctx, amd)
	}
	id, ok, err := h.auth.Authenticate(actx, detourv1.Router_Complete_FullMethodName)
	if err != nil {
		return nil, err
	}
	if ok {
		ctx = auth.NewContext(ctx, id)
	}
	return ctx, nil
}

// remoteAddr parses http.Request.RemoteAddr for auth's loopback checks.
func remoteAddr(s string) net.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}

// readBody reads r into b.
func readBody(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// setExtras sets detour's answer headers.
func setExtras(hd http.Header, served *detourv1.ServedBy, source detourv1.Source, attempts int32) {
	if served != nil {
		hd[HeaderServedBy] = []string{served.GetRegion() + "/" + served.GetBackend()}
	}
	if src := chatwire.SourceName(source); src != "" {
		hd[HeaderSource] = []string{src}
	}
	hd[HeaderAttempts] = []string{strconv.Itoa(int(attempts))}
}

var jsonType = []string{"application/json"}

// writeJSON writes v as the JSON answer with code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	bp := bodyPool.Get().(*[]byte)
	b, err := appendJSON((*bp)[:0], v)
	if err != nil {
		putBody(bp, b)
		writeErrorJSON(w, http.StatusInternalServerError, "server_error", "internal", "", "internal error")
		return
	}
	hd := w.Header()
	hd["Content-Type"] = jsonType
	hd["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(code)
	w.Write(b)
	putBody(bp, b)
}

// writeStatus writes the status of err (a gRPC status error from the
// shared path) as OpenAI's error JSON, through httpOf.
func writeStatus(w http.ResponseWriter, err error) {
	st := status.Convert(err)
	row := httpErrorOf(st.Code())
	param := ""
	var retry time.Duration
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			if v := d.GetFieldViolations(); len(v) > 0 && param == "" {
				param = v[0].GetField()
			}
		case *errdetails.RetryInfo:
			retry = d.GetRetryDelay().AsDuration()
		}
	}
	if row.status == http.StatusTooManyRequests || row.status == http.StatusServiceUnavailable {
		setRetryAfter(w.Header(), retry)
	}
	writeErrorJSON(w, row.status, row.kind, snake(st.Code()), param, st.Message())
}

// setRetryAfter sets Retry-After in whole seconds (rounded up, at least 1)
// and OpenAI's retry-after-ms, which its SDKs prefer. No hint means 1 s.
func setRetryAfter(hd http.Header, d time.Duration) {
	if d <= 0 {
		d = time.Second
	}
	hd["Retry-After"] = []string{strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)}
	hd["Retry-After-Ms"] = []string{strconv.FormatInt(max(d.Milliseconds(), 1), 10)}
}

// snake is code's name in snake_case: "resource_exhausted".
func snake(c codes.Code) string {
	n := c.String()
	b := make([]byte, 0, len(n)+4)
	for i := 0; i < len(n); i++ {
		ch := n[i]
		if ch >= 'A' && ch <= 'Z' {
			if i > 0 {
				b = append(b, '_')
			}
			ch += 'a' - 'A'
		}
		b = append(b, ch)
	}
	return string(b)
}

// writeErrorJSON writes OpenAI's error JSON.
func writeErrorJSON(w http.ResponseWriter, code int, kind, errCode, param, msg string) {
	e := chatwire.ErrorBody{Error: chatwire.ErrorDetail{Message: msg, Type: kind}}
	if errCode != "" {
		e.Error.Code = &errCode
	}
	if param != "" {
		e.Error.Param = &param
	}
	writeJSON(w, code, &e)
}

// models serves GET /v1/models: the models the live config names, those
// the caller's tenant may call.
func (h *HTTPServer) models(w http.ResponseWriter, r *http.Request) {
	ctx, err := h.identify(r.Context(), r, "")
	if err != nil {
		writeStatus(w, err)
		return
	}
	cfg := h.s.router.Snapshot().Config
	var names []string
	for _, rg := range cfg.Regions {
		for _, b := range rg.Backends {
			names = append(names, b.Models...)
		}
	}
	for _, b := range cfg.Fallbacks {
		names = append(names, b.Models...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	list := chatwire.ModelList{Object: "list", Data: []chatwire.Model{}}
	for _, n := range names {
		if auth.CheckModel(ctx, n) != nil {
			continue
		}
		list.Data = append(list.Data, chatwire.Model{ID: n, Object: "model", OwnedBy: "detour"})
	}
	writeJSON(w, http.StatusOK, &list)
}
