package server

import (
	"log"
	"log/slog"
	"net/http"

	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/chatwire"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// sseWriter writes a streamed answer as OpenAI's server-sent events: one
// chat.completion.chunk per chunk (the first with the assistant role and
// detour's extension member), the usage in an event of its own with no
// choices when the request asked for it (stream_options.include_usage),
// then "data: [DONE]". The status line and headers wait for the first
// chunk, so that a call that fails before it (every backend busy) gets an
// HTTP error status like a unary one; a failure after it is an error event
// ({"error":{...}}, which OpenAI's SDKs raise) and no [DONE]. Not safe for
// concurrent use: the router calls send from the handler's goroutine.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	created int64
	usage   bool // the request asked for the usage event

	started bool            // the status line and first event are written
	last    *detourv1.Usage // the stream's usage, sent at the end
	id      string
	model   string
	buf     []byte
}

var (
	eventType = []string{"text/event-stream"}
	noCache   = []string{"no-cache"}
)

// send writes one chunk.
func (s *sseWriter) send(ch *detourv1.CompleteChunk) error {
	if ch.Usage != nil {
		s.last = ch.Usage
	}
	c := chatwire.NewChunk(ch, s.created)
	if !s.started {
		s.started = true
		s.id, s.model = ch.GetId(), ch.GetModel()
		hd := s.w.Header()
		hd["Content-Type"] = eventType
		hd["Cache-Control"] = noCache
		setExtras(hd, ch.GetServedBy(), ch.GetSource(), ch.GetAttempts())
		s.w.WriteHeader(http.StatusOK)
		c.Choices[0].Delta.Role = "assistant"
		c.Detour = chatwire.NewExtension(ch.GetServedBy(), ch.GetSource(), ch.GetAttempts(), ch.GetAge().AsDuration().Milliseconds(), ch.GetAge() != nil)
	} else if ch.Delta == "" && ch.ReasoningDelta == "" && len(ch.ToolCallDeltas) == 0 && ch.Logprobs == nil && ch.FinishReason == "" {
		return nil // usage alone: sent at the end
	}
	return s.event(c)
}

// event writes "data: <v as JSON>" and flushes it.
func (s *sseWriter) event(v any) error {
	b := append(s.buf[:0], "data: "...)
	b, err := appendJSON(b, v)
	if err != nil {
		return err
	}
	b = append(b, '\n', '\n')
	s.buf = b
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}

// end finishes the stream after the call returned err.
func (s *sseWriter) end(err error) {
	if !s.started {
		if err == nil {
			// A stream with no chunk at all: an empty answer, still
			// well-formed.
			s.w.Header()["Content-Type"] = eventType
			s.w.WriteHeader(http.StatusOK)
			s.w.Write([]byte("data: [DONE]\n\n"))
			return
		}
		writeStatus(s.w, err)
		return
	}
	if err != nil {
		st := status.Convert(err)
		e := chatwire.ErrorBody{Error: chatwire.ErrorDetail{Message: st.Message(), Type: httpErrorOf(st.Code()).kind}}
		code := snake(st.Code())
		e.Error.Code = &code
		s.event(&e)
		return
	}
	if s.usage && s.last != nil {
		s.event(&chatwire.Chunk{ID: s.id, Object: "chat.completion.chunk", Created: s.created, Model: s.model,
			Choices: []chatwire.ChunkChoice{}, Usage: chatwire.NewUsage(s.last)})
	}
	s.w.Write([]byte("data: [DONE]\n\n"))
	s.rc.Flush()
}

// appendJSON appends v as JSON to b.
func appendJSON(b []byte, v any) ([]byte, error) {
	out, err := chatwire.Marshal(v)
	if err != nil {
		return b, err
	}
	return append(b, out...), nil
}

// slogErrorLog is the http.Server's error log: its lines (a TLS handshake
// that failed, a malformed request) go to lg at debug level, since any
// client can cause them at any rate.
func slogErrorLog(lg *slog.Logger) *log.Logger {
	return slog.NewLogLogger(lg.Handler(), slog.LevelDebug)
}
