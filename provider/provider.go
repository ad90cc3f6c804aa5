package provider

import (
	"context"
	"strings"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// ChunkStream is a streamed answer. It is an alias of an interface literal so
// that a consumer may declare an identical alias of its own without importing
// this package, and *OpenAI and *Detour still satisfy its interfaces.
//
// Recv returns the next chunk, and io.EOF (unwrapped) after the last chunk of
// a complete stream; any other error means the stream broke. Recv blocks
// until a chunk arrives or the context given to Stream ends; it must not be
// called from more than one goroutine at a time. Close releases the
// connection; it is safe to call after io.EOF or an error, more than once,
// and from another goroutine than Recv.
type ChunkStream = interface {
	Recv() (*detourv1.CompleteChunk, error)
	Close() error
}

// Limits that keep a hostile or broken upstream from exhausting memory.
const (
	// maxAnswerBytes caps a unary answer body and a gRPC message.
	maxAnswerBytes = 16 << 20
	// maxEventBytes caps one Server-Sent Event.
	maxEventBytes = 4 << 20
	// maxErrorBytes caps what is read of an error body to find its message.
	maxErrorBytes = 64 << 10
	// maxDrainBytes caps what is discarded to let a connection be reused.
	maxDrainBytes = 256 << 10
)

// credential holds a backend's API key. Clients keep it behind a pointer so
// that printing a client with %v shows an address, never the key.
type credential struct {
	key    string
	bearer string // "Bearer " + key
}

func newCredential(key string) *credential {
	if key == "" {
		return nil
	}
	return &credential{key: key, bearer: "Bearer " + key}
}

// scrub removes the key from text that came from upstream.
func (c *credential) scrub(s string) string {
	if c == nil {
		return s
	}
	return strings.ReplaceAll(s, c.key, "[redacted]")
}

// validKey reports whether key can travel in an HTTP header or gRPC metadata.
func validKey(key string) bool {
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// Progress hears how an upstream call is doing before its answer arrives,
// so that the caller can tell a call waiting in the provider's queue from a
// dead one. Its methods must be safe for concurrent use and must not block;
// a provider calls them from the goroutine that reads the answer.
type Progress interface {
	// KeepAlive reports a sign of life that is not part of the answer: the
	// response headers, an empty line before a unary answer, an SSE comment
	// (": keep-alive") or an empty event in a stream.
	KeepAlive()
	// Answering reports that the first byte of the answer arrived (unary
	// calls; for streams, the first chunk says so).
	Answering()
}

type progressKey struct{}

// WithProgress returns ctx carrying p: the providers' calls made with it
// report to p.
func WithProgress(ctx context.Context, p Progress) context.Context {
	return context.WithValue(ctx, progressKey{}, p)
}

// progressFrom returns the Progress of ctx, or one that does nothing.
func progressFrom(ctx context.Context) Progress {
	if p, ok := ctx.Value(progressKey{}).(Progress); ok && p != nil {
		return p
	}
	return noProgress{}
}

type noProgress struct{}

func isNoProgress(p Progress) bool {
	_, ok := p.(noProgress)
	return ok
}

func (noProgress) KeepAlive() {}
func (noProgress) Answering() {}
