package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/internal/fakellm"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func init() {
	register("seq", "added latency of one call at a time: HTTP client -> fakellm vs gRPC client -> detour -> fakellm HTTP", seq)
}

func seq(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("seq", flag.ContinueOnError)
	calls := fs.Int("calls", 10000, "measured calls per path")
	block := fs.Int("block", 500, "calls per path before switching to the other (interleaving evens out drift)")
	warm := fs.Int("warmup", 1000, "unmeasured calls per path first")
	bound := fs.Duration("target", 150*time.Microsecond, "target for the added p50")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fk, err := startFake(fakellm.Config{Name: "seq", Region: "local"}, true)
	if err != nil {
		return err
	}
	defer fk.stop()
	dt, err := startDetour(seqConfig(fk.openaiEndpoint()), "local", true)
	if err != nil {
		return err
	}
	defer dt.stop()

	conn, err := dial(dt.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	routed := unaryCall(detourv1.NewRouterClient(conn), request("hello, how are you today?"), 5*time.Second)
	direct := directHTTP(fk.http, "hello, how are you today?", 5*time.Second)
	gconn, err := dial(fk.grpc)
	if err != nil {
		return err
	}
	defer gconn.Close()
	directGRPC := unaryCall(detourv1.NewRouterClient(gconn), request("hello, how are you today?"), 5*time.Second)

	paths := []struct {
		name string
		fn   callFunc
	}{{"direct (HTTP client -> fakellm)", direct}, {"routed (gRPC client -> detour -> fakellm HTTP)", routed},
		{"reference: gRPC client -> fakellm gRPC", directGRPC}}
	for _, p := range paths {
		for range *warm {
			if err := p.fn(ctx); err != nil {
				return fmt.Errorf("%s warm-up: %w", p.name, err)
			}
		}
	}
	mark := markCPU()
	res := make([][]sample, len(paths))
	elapsed := make([]time.Duration, len(paths))
	for done := 0; done < *calls && ctx.Err() == nil; done += *block {
		n := min(*block, *calls-done)
		for i, p := range paths {
			r := closedLoop(ctx, 1, time.Hour, n, p.fn)
			res[i] = append(res[i], r.Samples...)
			elapsed[i] += r.Elapsed
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	foreign := mark.foreignCPU()
	sums := []summary{summarize(res[0], elapsed[0]), summarize(res[1], elapsed[1])}
	mean := func(ss []sample) time.Duration {
		var t time.Duration
		for _, s := range ss {
			t += s.Lat
		}
		return t / time.Duration(max(len(ss), 1))
	}
	fmt.Printf("### Sequential added latency\n\n%s; load %s; other processes used %.2f cores on average during the run; fakellm HTTP with zero latency; one call at a time, %d calls per path in blocks of %d, interleaved, after %d warm-up calls each.\n\n",
		machine(), loadavg(), foreign, *calls, *block, *warm)
	sums = append(sums, summarize(res[2], elapsed[2]))
	var rows [][]string
	for i, p := range paths[:2] {
		s := sums[i]
		rows = append(rows, []string{p.name, ms(s.P50), ms(pctOf(res[i], 0.90)), ms(s.P99), ms(s.P999), ms(mean(res[i])), s.codesText()})
	}
	add := func(a, b time.Duration) string { return ms(b - a) }
	rows = append(rows, []string{"**added by detour**",
		add(sums[0].P50, sums[1].P50), add(pctOf(res[0], 0.9), pctOf(res[1], 0.9)), add(sums[0].P99, sums[1].P99),
		add(sums[0].P999, sums[1].P999), add(mean(res[0]), mean(res[1])), ""})
	rows = append(rows, []string{paths[2].name + " (no detour: the cost of gRPC alone)", ms(sums[2].P50), ms(pctOf(res[2], 0.90)), ms(sums[2].P99), ms(sums[2].P999), ms(mean(res[2])), sums[2].codesText()})
	fmt.Println(mdTable([]string{"path", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "mean ms", "errors"}, rows))
	added50, added99 := sums[1].P50-sums[0].P50, sums[1].P99-sums[0].P99
	v50, v99 := verdict(added50 <= *bound), verdict(added99 <= *bound)
	fmt.Printf("Target: added p50 <= %s ms: %s (%s ms); added p99 <= %s ms: %s (%s ms).\n\n", ms(*bound), v50, ms(added50), ms(*bound), v99, ms(added99))
	if sums[0].OK != sums[0].N || sums[1].OK != sums[1].N {
		return missed("calls failed: direct %s, routed %s", sums[0].codesText(), sums[1].codesText())
	}
	if added50 > *bound {
		return missed("added p50 %s ms over the %s ms target", ms(added50), ms(*bound))
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "MISS"
}

func pctOf(ss []sample, q float64) time.Duration {
	lat := make([]time.Duration, 0, len(ss))
	for _, x := range ss {
		lat = append(lat, x.Lat)
	}
	slices.Sort(lat)
	return pct(lat, q)
}

// directHTTP calls fakellm's OpenAI API as a plain Go client would: one
// keep-alive http.Client, JSON encode, POST, JSON decode.
func directHTTP(addr, prompt string, timeout time.Duration) callFunc {
	url := "http://" + addr + "/v1/chat/completions"
	tr := &http.Transport{MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: true}
	client := &http.Client{Transport: tr}
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	type chatReq struct {
		Model    string `json:"model"`
		Messages []msg  `json:"messages"`
	}
	type chatResp struct {
		ID      string `json:"id"`
		Choices []struct {
			Message      msg    `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		body, err := json.Marshal(chatReq{Model: "deepseek-chat", Messages: []msg{{Role: "user", Content: prompt}}})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if resp.StatusCode != http.StatusOK {
			return status.Error(httpCode(resp.StatusCode), resp.Status)
		}
		var cr chatResp
		if err := json.Unmarshal(b, &cr); err != nil || len(cr.Choices) == 0 {
			return status.Errorf(codes.Internal, "bad answer: %v", err)
		}
		return nil
	}
}

// httpCode maps an HTTP status to the gRPC code detour would use.
func httpCode(s int) codes.Code {
	switch s {
	case 429:
		return codes.ResourceExhausted
	case 503, 529, 502, 504:
		return codes.Unavailable
	case 400, 422:
		return codes.InvalidArgument
	}
	return codes.Unknown
}

func seqConfig(endpoint string) string {
	return fmt.Sprintf(`regions:
  - name: local
    backends:
      - name: fake-http
        endpoint: %[1]s
        qps: 1000000
        max_concurrency: 100000
fallbacks:
  - name: fallback-http
    endpoint: %[1]s
limits:
  tenant_qps: 1000000
cache:
  disabled: true
`, endpoint)
}
