// Package fakellm is a simulated DeepSeek-like LLM backend for detour's
// demo, tests and benchmarks.
//
// A Server speaks the OpenAI chat completions API over HTTP, unary and
// server-sent events, and detour.v1.Router over gRPC, both at once if
// asked. Its answers are deterministic: the same messages get the same
// content and usage from a region,
//
//	[eu-west] echo: <the first words of the last user message> (ref 1a2b3c4d)
//
// with one token, and one streamed chunk, per word. Its Settings simulate a
// busy provider: latency and jitter, a fraction of "server busy" answers
// (HTTP 503, gRPC UNAVAILABLE), a QPS limit (HTTP 429 with Retry-After,
// gRPC RESOURCE_EXHAUSTED), requests that hang, stream pacing, and faults
// for chaos tests (malformed JSON, answers cut half-way). They change live,
// from Go (Server.SetSettings) or over HTTP (POST /control), and Stats
// count every request by outcome.
//
// In a test:
//
//	srv := fakellm.New(fakellm.Config{
//		Region:   "eu-west",
//		Settings: fakellm.Settings{Latency: 5 * time.Millisecond, BusyRate: 0.5},
//	})
//	if err := srv.Start("127.0.0.1:0", "127.0.0.1:0"); err != nil {
//		t.Fatal(err)
//	}
//	defer srv.Close()
//	endpoint := "http://" + srv.HTTPAddr() + "/v1" // OpenAI base URL
//	target := srv.GRPCAddr()                      // detour.v1.Router
//
// The HTTP endpoints are listed on Server.ServeHTTP. cmd/fakellm runs a
// Server from the command line with the flags of Config.RegisterFlags.
package fakellm
