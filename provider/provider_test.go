package provider

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A local copy of the router's interfaces: both clients must satisfy it.
// chunkStream is an alias, as the router's must be, so that the Stream
// signatures are identical.
type (
	chunkStream = interface {
		Recv() (*detourv1.CompleteChunk, error)
		Close() error
	}
	upstream interface {
		Complete(ctx context.Context, req *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error)
		Stream(ctx context.Context, req *detourv1.CompleteRequest) (chunkStream, error)
	}
)

var (
	_ upstream    = (*OpenAI)(nil)
	_ upstream    = (*Detour)(nil)
	_ chunkStream = (*openAIStream)(nil)
	_ chunkStream = (*detourStream)(nil)
)

const testBackend = "test-backend"

// backendFor describes a backend at endpoint whose key, if any, is read from
// a file.
func backendFor(t *testing.T, kind, endpoint, key string) regions.Backend {
	t.Helper()
	b := regions.Backend{Name: testBackend, Kind: kind, Endpoint: endpoint}
	if key != "" {
		dir := t.TempDir()
		t.Setenv(regions.KeyDirsVar, dir)
		b.APIKeyFile = filepath.Join(dir, "key")
		if err := os.WriteFile(b.APIKeyFile, []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func userRequest(content string) *detourv1.CompleteRequest {
	return &detourv1.CompleteRequest{
		Model:    "deepseek-chat",
		Messages: []*detourv1.Message{{Role: "user", Content: content}},
	}
}

// errCheck says what an upstream error must look like.
type errCheck struct {
	class      breaker.Class
	is         error         // errors.Is target, if any
	retryAfter time.Duration // breaker.RetryAfter
	contains   string        // substring of Error()
}

func (w errCheck) check(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want class %v", w.class)
	}
	t.Logf("error: %v", err)
	if got := breaker.Classify(err); got != w.class {
		t.Errorf("Classify(%q) = %v, want %v", err, got, w.class)
	}
	if w.is != nil && !errors.Is(err, w.is) {
		t.Errorf("errors.Is(%q, %v) = false", err, w.is)
	}
	if got := breaker.RetryAfter(err); got != w.retryAfter {
		t.Errorf("RetryAfter(%q) = %v, want %v", err, got, w.retryAfter)
	}
	if !strings.Contains(err.Error(), testBackend) {
		t.Errorf("error %q does not name the backend", err)
	}
	if !strings.Contains(err.Error(), w.contains) {
		t.Errorf("error %q does not contain %q", err, w.contains)
	}
}
