// Package hostile holds upstreams that misbehave on purpose: OpenAI-
// compatible chat completion handlers that stream without end, send huge
// bodies, answer with empty or unfinished answers, or quote secrets in
// their errors. Tests serve them with httptest; bench hostile serves them
// on loopback while it measures a detour process. They are kept apart from
// internal/fakellm, whose answers are always well formed.
//
//	ts := httptest.NewServer(hostile.EndlessStream())
//	defer ts.Close()
//
// Every handler is safe for concurrent use, reads and discards the request
// body, and returns once its answer is written or the client has gone.
package hostile

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
)

// Counter counts the requests a handler started and how many are running,
// for tests and bench to wait on. Its zero value is ready; it is safe for
// concurrent use.
type Counter struct{ started, running atomic.Int64 }

// Started returns the number of requests that reached the handler.
func (c *Counter) Started() int64 { return c.started.Load() }

// Running returns the number of requests the handler is serving now.
func (c *Counter) Running() int64 { return c.running.Load() }

// Count wraps h so that c counts its requests.
func (c *Counter) Count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.started.Add(1)
		c.running.Add(1)
		defer c.running.Add(-1)
		h.ServeHTTP(w, r)
	})
}

func discardRequest(r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 16<<20))
}

// EndlessStream answers every request with a text/event-stream of content
// deltas ("data: {...}" events of about 1 KiB) that never finishes, flushed
// as fast as the client reads, until the client goes away.
func EndlessStream() http.Handler {
	event := []byte(fmt.Sprintf("data: {\"id\":\"endless\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", filler(1000)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		discardRequest(r)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		f := w.(http.Flusher)
		for i := 0; r.Context().Err() == nil; i++ {
			if _, err := w.Write(event); err != nil {
				return
			}
			if i%16 == 0 {
				f.Flush()
			}
		}
	})
}

// HugeBody answers every request with status 200, a JSON content type and
// a body of size bytes (without a Content-Length, as a chunked stream
// would): the start of a chat completion whose content never closes.
func HugeBody(size int64) http.Handler {
	head := []byte(`{"id":"huge","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"`)
	block := []byte(filler(32 << 10))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		discardRequest(r)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		n, _ := w.Write(head)
		for left := size - int64(n); left > 0 && r.Context().Err() == nil; {
			b := block[:min(int64(len(block)), left)]
			if _, err := w.Write(b); err != nil {
				return
			}
			left -= int64(len(b))
		}
	})
}

// Answer answers every request with status 200 and body as JSON: use it
// for answers that parse but say nothing (`{"choices":[{}]}`).
func Answer(body string) http.Handler {
	return Status(http.StatusOK, body)
}

// Status answers every request with code and body as JSON: an error whose
// body quotes a prompt or a key, say.
func Status(code int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		discardRequest(r)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	})
}

// Stream answers every request with a text/event-stream of the given
// events' data, each as "data: <event>" and a blank line, and nothing
// more: the caller decides whether it ends with "[DONE]" and whether any
// event carries a finish reason.
func Stream(events ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		discardRequest(r)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, e := range events {
			fmt.Fprintf(w, "data: %s\n\n", e)
		}
	})
}

// Delta is the data of a stream event carrying content and, when finish
// is not empty, a finish reason.
func Delta(content, finish string) string {
	fr := "null"
	if finish != "" {
		fr = strconv.Quote(finish)
	}
	return fmt.Sprintf(`{"id":"h","model":"m","choices":[{"index":0,"delta":{"content":%q},"finish_reason":%s}]}`, content, fr)
}

// filler is n bytes of JSON-safe text.
func filler(n int) string {
	const words = "lorem ipsum dolor sit amet "
	b := make([]byte, n)
	for i := range b {
		b[i] = words[i%len(words)]
	}
	return string(b)
}
