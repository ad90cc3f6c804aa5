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
//	GET  /stats                Stats as JSON, with the name and region
//	POST /stats/reset          zero the Stats
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
	case outcomeHang:
		s.stats.count(fate)
		s.hang(r.Context())
		// Never answer: drop the connection if it is still there.
		panic(http.ErrAbortHandler)
	}

	var timer *time.Timer
	if !s.sleep(r.Context(), &timer, snap.delay()) {
		s.stats.count(outcomeCanceled)
		return
	}
	ans := newAnswer(s.region, &req)
	created := time.Now().Unix()
	if req.Stream {
		s.streamHTTP(w, r, sc, snap, timer, &ans, req.Model, created, fate)
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
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// streamHTTP sends ans as OpenAI server-sent events, DeepSeek style: a
// first chunk with the role, one chunk per token, a last chunk with the
// finish reason and usage, then [DONE].
func (s *Server) streamHTTP(w http.ResponseWriter, r *http.Request, sc *scratch, snap *snapshot, timer *time.Timer, ans *answer, model string, created int64, fate outcome) {
	h := w.Header()
	h["Content-Type"] = eventType
	h["Cache-Control"] = noCache
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	canceled := func() { s.stats.count(outcomeCanceled) }

	c := chunk{id: ans.id, model: model, created: created}
	sc.b = c.appendEvent(sc.b[:0], true, "", nil)
	if !send(sc.b) {
		canceled()
		return
	}
	half := ans.pieces / 2
	pause := snap.tokenInterval()
	rest := ans.content
	for i := range ans.pieces {
		if i > 0 && !s.sleep(r.Context(), &timer, pause) {
			canceled()
			return
		}
		var piece string
		piece, rest = nextPiece(rest)
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
		sc.b = c.appendEvent(sc.b[:0], false, piece, nil)
		if !send(sc.b) {
			canceled()
			return
		}
	}
	s.stats.count(fate)
	sc.b = c.appendEvent(sc.b[:0], false, "", ans)
	sc.b = append(sc.b, "data: [DONE]\n\n"...)
	send(sc.b)
}

// chunk holds the fields shared by the chunks of one stream.
type chunk struct {
	id, model string
	created   int64
}

// appendEvent appends one SSE event holding a chat.completion.chunk: the
// first one (role) with the role, else one with the content piece; the last
// one (last not nil) with the finish reason and usage of last.
func (c *chunk) appendEvent(dst []byte, role bool, piece string, last *answer) []byte {
	dst = append(dst, `data: {"id":`...)
	dst = appendJSONString(dst, c.id)
	dst = append(dst, `,"object":"chat.completion.chunk","created":`...)
	dst = strconv.AppendInt(dst, c.created, 10)
	dst = append(dst, `,"model":`...)
	dst = appendJSONString(dst, c.model)
	dst = append(dst, `,"system_fingerprint":"fp_fakellm","choices":[{"index":0,"delta":`...)
	if role {
		dst = append(dst, `{"role":"assistant","content":""}`...)
	} else {
		dst = append(dst, `{"content":`...)
		dst = appendJSONString(dst, piece)
		dst = append(dst, '}')
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
	dst = appendJSONString(dst, ans.content)
	dst = append(dst, `},"logprobs":null,"finish_reason":`...)
	dst = appendJSONString(dst, ans.finish)
	dst = append(dst, `}],"usage":`...)
	dst = ans.appendUsage(dst)
	return append(dst, '}')
}

func (a *answer) appendUsage(dst []byte) []byte {
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.prompt), 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.pieces), 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, int64(a.prompt+a.pieces), 10)
	return append(dst, '}')
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
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeValue(w, http.StatusOK, statsBody{s.name, s.region, s.Stats()})
}

func (s *Server) handleStatsReset(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	writeValue(w, http.StatusOK, statsBody{s.name, s.region, s.Stats()})
}
