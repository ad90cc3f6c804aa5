package fakellm

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// maxBody bounds the size of a request body.
const maxBody = 8 << 20

// Bodies of the OpenAI-style error answers that carry no detail.
var (
	busyBody = []byte(`{"error":{"message":"Server busy, please retry later","type":"server_busy","param":null,"code":"server_busy"}}`)

	rateLimitBody = []byte(`{"error":{"message":"Rate limit reached for requests. Please try again in 1s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`)

	// exhaustedBody is DeepSeek's answer for an account out of credit.
	exhaustedBody = []byte(`{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}`)
)

// Header values, shared by every answer and never modified.
var (
	jsonType      = []string{"application/json"}
	eventType     = []string{"text/event-stream"}
	noCache       = []string{"no-cache"}
	retryAfterOne = []string{"1"}
)

// scratch is a buffer for request and response bodies, reused through
// scratchPool.
type scratch struct{ b []byte }

var scratchPool = sync.Pool{New: func() any { return &scratch{b: make([]byte, 0, 4096)} }}

// maxPooled bounds the buffers kept in scratchPool.
const maxPooled = 64 << 10

func putScratch(sc *scratch) {
	if cap(sc.b) <= maxPooled {
		scratchPool.Put(sc)
	}
}

// readAll is io.ReadAll into b.
func readAll(r io.Reader, b []byte) ([]byte, error) {
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

// ServeHTTP serves the HTTP API:
//
//	POST /v1/chat/completions  OpenAI chat completion, unary or SSE ("stream": true)
//	GET  /v1/models            OpenAI model list
//	GET  /control              current Settings as JSON
//	POST /control              change the Settings present in a JSON document
//	GET  /stats                Stats as JSON, with the name and region, and ConnStats as http_conns
//	POST /stats/reset          zero the Stats, ConnStats and the Usage
//	GET  /usage                Usage as JSON: the tokens spent
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.handleChat)
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("GET /control", s.handleGetControl)
	mux.HandleFunc("POST /control", s.handlePostControl)
	mux.HandleFunc("GET /stats", s.handleStats)
	mux.HandleFunc("POST /stats/reset", s.handleStatsReset)
	mux.HandleFunc("GET /usage", s.handleUsage)
	return mux
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["X-Fakellm-Name"] = s.nameHdr
	h["X-Fakellm-Region"] = s.regionHdr
	if s.closing() {
		writeJSON(w, http.StatusServiceUnavailable, busyBody)
		return
	}
	s.handlers.Add(1)
	defer s.handlers.Done()
	s.stats.begin()
	defer s.stats.end()
	defer s.conns.begin(r)()

	sc := scratchPool.Get().(*scratch)
	defer putScratch(sc)
	var err error
	sc.b, err = readAll(http.MaxBytesReader(w, r.Body, maxBody), sc.b[:0])
	if err != nil {
		s.badRequestHTTP(w, sc, &invalid{msg: "cannot read the request body: " + err.Error()})
		return
	}
	var req chatRequest
	if err := json.Unmarshal(sc.b, &req); err != nil {
		s.badRequestHTTP(w, sc, &invalid{msg: "invalid JSON body: " + err.Error()})
		return
	}
	if bad := req.validate(); bad != nil {
		s.badRequestHTTP(w, sc, bad)
		return
	}

	snap := s.snap.Load()
	fate := decide(snap, s.stats.inFlight.n.Load())
	switch fate {
	case outcomeRateLimited:
		s.stats.count(fate)
		h["Retry-After"] = retryAfterOne
		writeJSON(w, http.StatusTooManyRequests, rateLimitBody)
		return
	case outcomeBusy:
		s.stats.count(fate)
		writeJSON(w, http.StatusServiceUnavailable, busyBody)
		return
	case outcomeExhausted:
		s.stats.count(fate)
		writeJSON(w, http.StatusPaymentRequired, exhaustedBody)
		return
	case outcomeHang:
		s.stats.count(fate)
		s.hang(r.Context())
		// Never answer: drop the connection if it is still there.
		panic(http.ErrAbortHandler)
	}

	var timer *time.Timer
	queued := snap.QueueDelay > 0
	if queued && !s.queueHTTP(w, r, &timer, snap, req.Stream) {
		s.stats.count(outcomeCanceled)
		return
	}
	if !s.sleep(r.Context(), &timer, snap.delay()) {
		s.stats.count(outcomeCanceled)
		return
	}
	ans := newAnswer(s.region, &req, snap.answerOptions(&req))
	s.stats.started(&ans)
	created := time.Now().Unix()
	if req.Stream {
		s.streamHTTP(w, r, sc, snap, timer, &ans, req.Model, created, fate, queued)
		return
	}

	if !s.sleep(r.Context(), &timer, snap.ttft()) {
		s.stats.count(outcomeCanceled)
		return
	}
	sc.b = appendCompletion(sc.b[:0], &ans, req.Model, created)
	body := sc.b
	h["Content-Type"] = jsonType
	s.stats.count(fate)
	switch fate {
	case outcomeGarbage:
		body = body[:len(body)/2] // a whole answer of malformed JSON
	case outcomeCut:
		// Promise the whole body, send half, drop the connection.
		if !queued {
			h["Content-Length"] = []string{strconv.Itoa(len(body))}
			w.WriteHeader(http.StatusOK)
		}
		w.Write(body[:len(body)/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
	if !queued {
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.WriteHeader(http.StatusOK)
	}
	if _, err := w.Write(body); err == nil && fate == outcomeOK {
		s.stats.sent(ans.completion())
	}
}

// Keep-alives of a queued request, as DeepSeek sends them.
var (
	keepAliveLine    = []byte("\n")
	keepAliveComment = []byte(": keep-alive\n\n")
)

// queueHTTP holds a request for snap.QueueDelay: it sends the answer's
// status and headers at once, then a keep-alive every
// snap.KeepAliveInterval (an empty line, or an SSE comment for a stream).
// It reports false if the client went away or the Server closed.
func (s *Server) queueHTTP(w http.ResponseWriter, r *http.Request, timer **time.Timer, snap *snapshot, stream bool) bool {
	h := w.Header()
	keepAlive := keepAliveLine
	if stream {
		h["Content-Type"] = eventType
		h["Cache-Control"] = noCache
		keepAlive = keepAliveComment
	} else {
		h["Content-Type"] = jsonType
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return false
	}
	every := snap.KeepAliveInterval
	if every <= 0 {
		every = time.Second
	}
	for left := snap.QueueDelay; left > 0; {
		d := min(every, left)
		if !s.sleep(r.Context(), timer, d) {
			return false
		}
		left -= d
		if left <= 0 {
			break
		}
		if _, err := w.Write(keepAlive); err != nil || rc.Flush() != nil {
			return false
		}
	}
	return true
}

// streamHTTP sends ans as OpenAI server-sent events, DeepSeek style: a
// first chunk with the role, the think phase one reasoning_content chunk
// per token, then one chunk per token of content (or the tool call: a chunk
// with its id and name, then its arguments in pieces), a last chunk with the
// finish reason and usage, then [DONE]. queued says queueHTTP already sent
// the headers.
func (s *Server) streamHTTP(w http.ResponseWriter, r *http.Request, sc *scratch, snap *snapshot, timer *time.Timer, ans *answer, model string, created int64, fate outcome, queued bool) {
	h := w.Header()
	if !queued {
		h["Content-Type"] = eventType
		h["Cache-Control"] = noCache
		w.WriteHeader(http.StatusOK)
	}
	rc := http.NewResponseController(w)
	send := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	canceled := func() { s.stats.count(outcomeCanceled) }

	c := chunk{id: ans.id, model: model, created: created, call: ans.call, logprobs: ans.logprobs >= 0}
	sc.b = c.appendEvent(sc.b[:0], deltaRole, "", nil)
	if !send(sc.b) {
		canceled()
		return
	}
	// The answer has started; its first token may take a while yet.
	if !s.sleep(r.Context(), &timer, snap.ttft()) {
		canceled()
		return
	}
	think := snap.thinkInterval()
	rest := ans.reasoning
	for i := range ans.thoughts {
		if i > 0 && !s.sleep(r.Context(), &timer, think) {
			canceled()
			return
		}
		var piece string
		piece, rest = nextPiece(rest)
		sc.b = c.appendEvent(sc.b[:0], deltaReasoning, piece, nil)
		if !send(sc.b) {
			canceled()
			return
		}
		s.stats.sent(1)
	}
	pause := snap.tokenInterval()
	pieces := ans.pieces
	if ans.call != nil {
		pieces = 1 + ans.call.pieces() // the call's name, then its arguments
	}
	half := pieces / 2
	cut, clean := -1, false
	if fate == outcomeOK {
		cut, clean = snap.breakAt(pieces)
	}
	rest = ans.content
	for i := range pieces {
		if (i > 0 || ans.thoughts > 0) && !s.sleep(r.Context(), &timer, pause) {
			canceled()
			return
		}
		var piece string
		kind := deltaContent
		switch {
		case ans.call != nil && i == 0:
			kind = deltaToolStart
		case ans.call != nil:
			kind = deltaToolArgs
			piece = ans.call.args[(i-1)*argPiece : min(i*argPiece, len(ans.call.args))]
		default:
			piece, rest = nextPiece(rest)
		}
		if i == cut {
			s.stats.count(outcomeBroken)
			if clean {
				return // the body ends, without a finish reason or [DONE]
			}
			panic(http.ErrAbortHandler)
		}
		if i == half {
			switch fate {
			case outcomeCut:
				s.stats.count(fate)
				panic(http.ErrAbortHandler)
			case outcomeGarbage:
				if !send([]byte("data: {\"id\":\"" + ans.id + "\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\n\n")) {
					canceled()
					return
				}
				continue
			}
		}
		sc.b = c.appendEvent(sc.b[:0], kind, piece, nil)
		if kind == deltaContent && ans.logprobs >= 0 {
			sc.b = appendPieceLogprobs(sc.b, piece, i, ans.logprobs)
		}
		if !send(sc.b) {
			canceled()
			return
		}
		s.stats.sent(1)
	}
	s.stats.count(fate)
	sc.b = c.appendEvent(sc.b[:0], deltaContent, "", ans)
	sc.b = append(sc.b, "data: [DONE]\n\n"...)
	send(sc.b)
}

// chunk holds the fields shared by the chunks of one stream.
type chunk struct {
	id, model string
	created   int64
	call      *toolCall // the answer's tool call, for deltaToolStart
	logprobs  bool      // content events carry logprobs
}

// What the delta of a chunk carries.
type deltaKind int

const (
	deltaRole      deltaKind = iota // the first chunk: the role
	deltaContent                    // a piece of content
	deltaReasoning                  // a piece of the think phase
	deltaToolStart                  // the tool call's id, type and name
	deltaToolArgs                   // a piece of the tool call's arguments
)

// appendEvent appends one SSE event holding a chat.completion.chunk with a
// delta of kind carrying piece; the last one (last not nil) carries the
// finish reason and usage of last. An event of content whose logprobs
// follow is left open after its delta: appendPieceLogprobs closes it.
func (c *chunk) appendEvent(dst []byte, kind deltaKind, piece string, last *answer) []byte {
	dst = append(dst, `data: {"id":`...)
	dst = appendJSONString(dst, c.id)
	dst = append(dst, `,"object":"chat.completion.chunk","created":`...)
	dst = strconv.AppendInt(dst, c.created, 10)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, c.model)
	dst = append(dst, `,"system_fingerprint":"fp_fakellm","choices":[{"index":0,"delta":`...)
	switch kind {
	case deltaRole:
		dst = append(dst, `{"role":"assistant","content":""}`...)
	case deltaReasoning:
		dst = append(dst, `{"content":null,"reasoning_content":`...)
		dst = appendJSONString(dst, piece)
		dst = append(dst, '}')
	case deltaToolStart:
		dst = append(dst, `{"tool_calls":[{"index":0,"id":`...)
		dst = appendJSONString(dst, c.call.id)
		dst = append(dst, `,"type":"function","function":{"name":`...)
		dst = appendJSONString(dst, c.call.name)
		dst = append(dst, `,"arguments":""}}]}`...)
	case deltaToolArgs:
		dst = append(dst, `{"tool_calls":[{"index":0,"function":{"arguments":`...)
		dst = appendJSONString(dst, piece)
		dst = append(dst, `}}]}`...)
	default:
		dst = append(dst, `{"content":`...)
		dst = appendJSONString(dst, piece)
		dst = append(dst, '}')
	}
	if kind == deltaContent && last == nil && c.logprobs {
		return dst // appendPieceLogprobs goes on
	}
	dst = append(dst, `,"logprobs":null,"finish_reason":`...)
	if last == nil {
		dst = append(dst, `null}],"usage":null}`...)
	} else {
		dst = appendJSONString(dst, last.finish)
		dst = append(dst, `}],"usage":`...)
		dst = last.appendUsage(dst)
		dst = append(dst, '}')
	}
	return append(dst, "\n\n"...)
}

// appendCompletion appends the unary chat.completion answer.
func appendCompletion(dst []byte, ans *answer, model string, created int64) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, ans.id)
	dst = append(dst, `,"object":"chat.completion","created":`...)
	dst = strconv.AppendInt(dst, created, 10)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, model)
	dst = append(dst, `,"system_fingerprint":"fp_fakellm","choices":[{"index":0,"message":{"role":"assistant","content":`...)
	if ans.call != nil {
		dst = append(dst, "null"...)
	} else {
		dst = appendJSONString(dst, ans.content)
	}
	if ans.thoughts > 0 {
		dst = append(dst, `,"reasoning_content":`...)
		dst = appendJSONString(dst, ans.reasoning)
	}
	if c := ans.call; c != nil {
		dst = append(dst, `,"tool_calls":[{"id":`...)
		dst = appendJSONString(dst, c.id)
		dst = append(dst, `,"type":"function","function":{"name":`...)
		dst = appendJSONString(dst, c.name)
		dst = append(dst, `,"arguments":`...)
		dst = appendJSONString(dst, c.args)
		dst = append(dst, `}}]`...)
	}
	dst = append(dst, `},"logprobs":`...)
	if ans.logprobs >= 0 && ans.pieces > 0 {
		dst = append(dst, `{"content":[`...)
		rest := ans.content
		for i := range ans.pieces {
			var piece string
			piece, rest = nextPiece(rest)
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendTokenLogprob(dst, piece, i, ans.logprobs)
		}
		dst = append(dst, `]}`...)
	} else {
		dst = append(dst, "null"...)
	}
	dst = append(dst, `,"finish_reason":`...)
	dst = appendJSONString(dst, ans.finish)
	dst = append(dst, `}],"usage":`...)
	dst = ans.appendUsage(dst)
	return append(dst, '}')
}

// appendUsage appends the usage DeepSeek reports: OpenAI's counts, the
// context cache's hits and misses (the prompt before the last message
// counts as cached), and the reasoning tokens of a think phase.
func (a *answer) appendUsage(dst []byte) []byte {
	completion := a.completion()
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.prompt), 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, int64(completion), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.prompt+completion), 10)
	dst = append(dst, `,"prompt_tokens_details":{"cached_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.cached), 10)
	dst = append(dst, `},"prompt_cache_hit_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.cached), 10)
	dst = append(dst, `,"prompt_cache_miss_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.prompt-a.cached), 10)
	if a.thoughts > 0 {
		dst = append(dst, `,"completion_tokens_details":{"reasoning_tokens":`...)
		dst = strconv.AppendInt(dst, int64(a.thoughts), 10)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// appendPieceLogprobs ends an event that appendEvent left open after a
// content delta with the logprobs of its one token.
func appendPieceLogprobs(dst []byte, piece string, i, top int) []byte {
	dst = append(dst, `,"logprobs":{"content":[`...)
	dst = appendTokenLogprob(dst, piece, i, top)
	dst = append(dst, `]},"finish_reason":null}],"usage":null}`...)
	return append(dst, "\n\n"...)
}

// appendTokenLogprob appends the made-up, deterministic log probability of
// the i-th token, with top alternatives.
func appendTokenLogprob(dst []byte, token string, i, top int) []byte {
	dst = append(dst, `{"token":`...)
	dst = appendJSONString(dst, token)
	dst = append(dst, `,"logprob":`...)
	dst = strconv.AppendFloat(dst, tokenLogprob(i, 0), 'g', -1, 64)
	dst = append(dst, `,"bytes":`...)
	dst = appendBytes(dst, token)
	dst = append(dst, `,"top_logprobs":[`...)
	for j := range top {
		if j > 0 {
			dst = append(dst, ',')
		}
		alt := token
		if j > 0 {
			alt = token + "~" + strconv.Itoa(j)
		}
		dst = append(dst, `{"token":`...)
		dst = appendJSONString(dst, alt)
		dst = append(dst, `,"logprob":`...)
		dst = strconv.AppendFloat(dst, tokenLogprob(i, j), 'g', -1, 64)
		dst = append(dst, `,"bytes":`...)
		dst = appendBytes(dst, alt)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// tokenLogprob is the log probability of the j-th likeliest token at
// position i.
func tokenLogprob(i, j int) float64 { return -float64(i%7+1)/8 - float64(j) }

func appendBytes(dst []byte, s string) []byte {
	dst = append(dst, '[')
	for k := 0; k < len(s); k++ {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, int64(s[k]), 10)
	}
	return append(dst, ']')
}

// badRequestHTTP counts and answers an invalid request with status 400 and
// an OpenAI error body.
func (s *Server) badRequestHTTP(w http.ResponseWriter, sc *scratch, bad *invalid) {
	s.stats.count(outcomeBadRequest)
	b := append(sc.b[:0], `{"error":{"message":`...)
	b = appendJSONString(b, bad.msg)
	b = append(b, `,"type":"invalid_request_error","param":`...)
	if bad.field == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, bad.field)
	}
	b = append(b, `,"code":"invalid_request_error"}}`...)
	sc.b = b
	writeJSON(w, http.StatusBadRequest, b)
}

func writeJSON(w http.ResponseWriter, code int, body []byte) {
	w.Header()["Content-Type"] = jsonType
	w.WriteHeader(code)
	w.Write(body)
}

// writeValue answers v encoded as JSON.
func writeValue(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, code, append(b, '\n'))
}

// errorBody is an OpenAI error answer, for the control endpoints.
func errorBody(msg string) any {
	type detail struct {
		Message string `json:"message"`
		Type    string `json:"type"`
	}
	return struct {
		Error detail `json:"error"`
	}{detail{msg, "invalid_request_error"}}
}

// modelsBody is the answer to GET /v1/models.
func modelsBody(owner string, models []string) []byte {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range models {
		list.Data = append(list.Data, model{ID: m, Object: "model", OwnedBy: owner})
	}
	b, err := json.Marshal(list)
	if err != nil {
		panic(err) // strings only: cannot fail
	}
	return b
}

func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.modelsBody)
}

func (s *Server) handleGetControl(w http.ResponseWriter, _ *http.Request) {
	writeValue(w, http.StatusOK, s.Settings())
}

// handlePostControl changes the settings present in the JSON body and
// answers the new settings; an invalid body or value changes nothing and
// gets 400.
func (s *Server) handlePostControl(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writeValue(w, http.StatusBadRequest, errorBody("cannot read the body: "+err.Error()))
		return
	}
	s.controlMu.Lock()
	defer s.controlMu.Unlock()
	next := s.snap.Load().Settings
	if err := json.Unmarshal(body, &next); err != nil {
		writeValue(w, http.StatusBadRequest, errorBody("invalid settings: "+err.Error()))
		return
	}
	if err := next.Validate(); err != nil {
		writeValue(w, http.StatusBadRequest, errorBody("invalid settings: "+err.Error()))
		return
	}
	s.snap.Store(newSnapshot(next, s.snap.Load()))
	writeValue(w, http.StatusOK, next)
}

// statsBody is the JSON answer of /stats.
type statsBody struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	Stats
	HTTPConns ConnStats `json:"http_conns"`
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeValue(w, http.StatusOK, statsBody{s.name, s.region, s.Stats(), s.ConnStats()})
}

func (s *Server) handleUsage(w http.ResponseWriter, _ *http.Request) {
	writeValue(w, http.StatusOK, s.Usage())
}

func (s *Server) handleStatsReset(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	writeValue(w, http.StatusOK, statsBody{s.name, s.region, s.Stats(), s.ConnStats()})
}
