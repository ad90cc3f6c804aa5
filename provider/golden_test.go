package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/detour-dev/detour/auth"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestGolden")

// TestGolden maps requests and answers written after DeepSeek's and OpenAI's
// documented examples (testdata/golden), both ways: <case>.in.json is a
// detour.v1 request (protojson); <case>.upstream.json is the JSON body the
// OpenAI client must send for it (golden); <case>.answer.json or
// <case>.answer.sse is the upstream's answer, as the provider documents it;
// <case>.out.json is the detour.v1 answer (golden: a CompleteResponse, or
// the chunks of a stream). go test ./provider -run TestGolden -update
// rewrites the golden files; read the diff before committing it.
func TestGolden(t *testing.T) {
	tests := []struct {
		name     string
		stream   bool
		tenantAs string // the backend's send_tenant_as; the caller's tenant is "team-a"
	}{
		{name: "deepseek-reasoner"},
		{name: "deepseek-reasoner-stream", stream: true},
		{name: "deepseek-tools"},
		{name: "deepseek-tool-result"},
		{name: "deepseek-json"},
		{name: "openai-tools-stream", stream: true},
		{name: "openai-logprobs"},
		{name: "openai-structured", tenantAs: regions.TenantAsUser},
		{name: "everything", tenantAs: regions.TenantAsUserID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := func(ext string) string { return filepath.Join("testdata", "golden", tt.name+ext) }
			req := &detourv1.CompleteRequest{}
			if err := protojson.Unmarshal(readFile(t, path(".in.json")), req); err != nil {
				t.Fatalf("%s: %v", path(".in.json"), err)
			}
			answer, contentType := path(".answer.json"), "application/json"
			if tt.stream {
				answer, contentType = path(".answer.sse"), "text/event-stream"
			}
			body := readFile(t, answer)
			var mu sync.Mutex
			var sent []byte
			ts := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				sent = b
				mu.Unlock()
				w.Header().Set("Content-Type", contentType)
				w.Write(body)
			})
			b := backendFor(t, "", ts.URL+"/v1", "")
			b.SendTenantAs = tt.tenantAs
			o, err := NewOpenAI(b)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			ctx := auth.WithTenant(context.Background(), "team-a")

			var got []proto.Message
			if tt.stream {
				st, err := o.Stream(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				for {
					c, err := st.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, c)
				}
			} else {
				resp, err := o.Complete(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, resp)
			}
			mu.Lock()
			upstream := indentJSON(t, sent)
			mu.Unlock()
			out := marshalAnswers(t, got)
			if *update {
				writeFile(t, path(".upstream.json"), upstream)
				writeFile(t, path(".out.json"), out)
				return
			}
			if diff := cmp.Diff(string(upstream), string(readFile(t, path(".upstream.json")))); diff != "" {
				t.Errorf("upstream request (-got +want %s):\n%s", path(".upstream.json"), diff)
			}
			want := unmarshalAnswers(t, readFile(t, path(".out.json")), tt.stream)
			if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
				t.Errorf("answer (-got +want %s):\n%s", path(".out.json"), diff)
			}
		})
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// indentJSON formats a JSON document stably, keeping the order of members.
func indentJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return append(out.Bytes(), '\n')
}

// marshalAnswers writes answers as a JSON array of protojson objects.
func marshalAnswers(t *testing.T, ms []proto.Message) []byte {
	t.Helper()
	var parts []string
	for _, m := range ms {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(b))
	}
	return indentJSON(t, []byte("["+strings.Join(parts, ",")+"]"))
}

func unmarshalAnswers(t *testing.T, b []byte, stream bool) []proto.Message {
	t.Helper()
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	var out []proto.Message
	for _, r := range raw {
		var m proto.Message = &detourv1.CompleteResponse{}
		if stream {
			m = &detourv1.CompleteChunk{}
		}
		if err := protojson.Unmarshal(r, m); err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		out = append(out, m)
	}
	return out
}
