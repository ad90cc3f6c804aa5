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
// with one token, and one streamed chunk, per word. It answers like
// DeepSeek's API in its richer modes too: a request that thinks
// (deepseek-reasoner, or "thinking" enabled) gets a think phase first,
// streamed as reasoning_content deltas; a request that offers tools gets a
// call of one (its arguments streamed in pieces), and a tool's result sent
// back gets "[eu-west] result: <its words>"; JSON mode gets a JSON object;
// logprobs are made up per token; usage reports the prompt before the last
// message as a context-cache hit, and the reasoning tokens.
//
// Its Settings simulate a busy provider: latency and jitter, a fraction of
// "server busy" answers (HTTP 503, gRPC UNAVAILABLE), a QPS limit (HTTP 429
// with Retry-After, gRPC RESOURCE_EXHAUSTED), requests that hang, stream
// pacing, a provider queue that sends keep-alives (empty lines, SSE
// ": keep-alive" comments), blank JSON-mode answers, an account out of
// credit (HTTP 402), and faults for chaos tests (malformed JSON, answers cut
// half-way). For streams that survive: a wait for the first token with a
// log-normal spread and a heavy Pareto tail (TTFT), streams that break after
// a random number of chunks, dropped or closed cleanly (BreakRate),
// DeepSeek's prefix completion (an assistant prefix is continued, so a
// spliced answer can be compared with an unbroken one) and answers padded
// to a length (AnswerTokens). They change live, from Go (Server.SetSettings) or over HTTP
// (POST /control), and Stats count every request by outcome.
//
// Its HTTP listener speaks HTTP/1.1, and HTTP/2 when asked: h2c (Config.H2C)
// or TLS with a self-signed certificate made at Start (Config.TLS,
// Server.CertPEM), h2 offered through ALPN as a provider does. ConnStats
// count its connections and the most requests in flight on one, so that a
// test sees whether a client multiplexes its calls.
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
