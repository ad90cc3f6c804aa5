package fakellm

import (
	"flag"
	"strings"
)

// RegisterFlags defines on fs the flags of cmd/fakellm that describe c:
// -name, -region, -models (comma-separated), -h2c, -tls, -max-streams and
// one flag per Settings
// field: -latency, -jitter, -busy-rate, -qps, -burst, -capacity,
// -max-concurrency, -hang-rate, -tokens-per-sec, -garbage-rate, -cut-rate,
// -think-tokens, -think-interval, -json-blank-rate, -queue-delay,
// -keep-alive-interval, -exhausted-rate, -ttft, -ttft-sigma,
// -ttft-tail-rate, -ttft-tail, -break-rate, -break-clean,
// -prefix-completion, -answer-tokens. The current values of c are the
// defaults. Parsing does not validate ranges: call c.Validate after.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Name, "name", c.Name, "backend `name` in /stats and answers (default \"fakellm\")")
	fs.StringVar(&c.Region, "region", c.Region, "`region` echoed in answers and /stats (default \"local\")")
	fs.Func("models", "comma-separated `list` of models reported by /v1/models (default deepseek-chat,deepseek-reasoner)", func(v string) error {
		c.Models = strings.Split(v, ",")
		return nil
	})
	fs.BoolVar(&c.H2C, "h2c", c.H2C, "serve HTTP/2 without TLS (prior knowledge) beside HTTP/1.1 on the HTTP listener")
	fs.BoolVar(&c.TLS, "tls", c.TLS, "serve the HTTP API over TLS (HTTP/2 and HTTP/1.1 through ALPN) with a self-signed certificate made at start")
	fs.IntVar(&c.MaxStreams, "max-streams", c.MaxStreams, "HTTP/2 streams a client may have open at once on one connection, 0 = net/http's default")
	st := &c.Settings
	fs.DurationVar(&st.Latency, "latency", st.Latency, "mean delay before an answer starts")
	fs.DurationVar(&st.Jitter, "jitter", st.Jitter, "uniform +/- spread of the latency")
	fs.Float64Var(&st.BusyRate, "busy-rate", st.BusyRate, "`fraction` (0..1) of requests answered server busy (HTTP 503, gRPC UNAVAILABLE)")
	fs.Float64Var(&st.QPS, "qps", st.QPS, "admitted requests per second, 0 = unlimited; above it HTTP 429, gRPC RESOURCE_EXHAUSTED")
	fs.IntVar(&st.Burst, "burst", st.Burst, "requests admitted at once above -qps, 0 = a tenth of a second's worth")
	fs.Float64Var(&st.Capacity, "capacity", st.Capacity, "requests per second served, 0 = unlimited; above it HTTP 503 server busy (load-dependent busy)")
	fs.IntVar(&st.MaxConcurrency, "max-concurrency", st.MaxConcurrency, "requests in flight at once, 0 = unlimited; beyond it HTTP 503 server busy at once")
	fs.Float64Var(&st.HangRate, "hang-rate", st.HangRate, "`fraction` (0..1) of requests accepted and never answered")
	fs.Float64Var(&st.TokensPerSec, "tokens-per-sec", st.TokensPerSec, "pace of streamed chunks, one token each, 0 = no pacing")
	fs.Float64Var(&st.GarbageRate, "garbage-rate", st.GarbageRate, "`fraction` (0..1) of requests answered 200 with malformed JSON")
	fs.Float64Var(&st.CutRate, "cut-rate", st.CutRate, "`fraction` (0..1) of requests whose answer is cut half-way")
	fs.IntVar(&st.ThinkTokens, "think-tokens", st.ThinkTokens, "reasoning tokens a thinking request (deepseek-reasoner, thinking enabled) streams before its answer, 0 = 8")
	fs.DurationVar(&st.ThinkInterval, "think-interval", st.ThinkInterval, "pause between streamed reasoning chunks, 0 = the -tokens-per-sec pace")
	fs.Float64Var(&st.JSONBlankRate, "json-blank-rate", st.JSONBlankRate, "`fraction` (0..1) of JSON-mode answers whose content is blank")
	fs.DurationVar(&st.QueueDelay, "queue-delay", st.QueueDelay, "time every request waits in a queue first, sending keep-alives over HTTP (empty lines, SSE comments)")
	fs.DurationVar(&st.KeepAliveInterval, "keep-alive-interval", st.KeepAliveInterval, "pause between keep-alives while queued, 0 = 1s")
	fs.Float64Var(&st.ExhaustedRate, "exhausted-rate", st.ExhaustedRate, "`fraction` (0..1) of requests answered HTTP 402 Insufficient Balance")
	fs.DurationVar(&st.TTFT, "ttft", st.TTFT, "median wait for the first token, after -latency (a stream has started but sends no token)")
	fs.Float64Var(&st.TTFTSigma, "ttft-sigma", st.TTFTSigma, "log-normal spread of the -ttft wait, 0..4 (0.5: p99 at 3.2x the median; 0: none)")
	fs.Float64Var(&st.TTFTTailRate, "ttft-tail-rate", st.TTFTTailRate, "`fraction` (0..1) of answers whose first token waits a heavy-tailed extra time (-ttft-tail)")
	fs.DurationVar(&st.TTFTTail, "ttft-tail", st.TTFTTail, "scale of the heavy tail: Pareto, shape 1.5, from this extra wait up to 100x it")
	fs.Float64Var(&st.BreakRate, "break-rate", st.BreakRate, "`fraction` (0..1) of streams cut after a random number of chunks, before the last")
	fs.Float64Var(&st.BreakClean, "break-clean", st.BreakClean, "`fraction` (0..1) of broken streams that end cleanly (no [DONE], gRPC OK) rather than dropped")
	fs.BoolVar(&st.PrefixCompletion, "prefix-completion", st.PrefixCompletion, "continue an answer from a last assistant message with prefix: true (DeepSeek's prefix completion)")
	fs.IntVar(&st.AnswerTokens, "answer-tokens", st.AnswerTokens, "pad text answers to this many tokens with words drawn from their ref (0: the echo alone)")
}
