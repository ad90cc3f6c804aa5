package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/detour-dev/detour/spend"
)

// slogLine is the line slog's JSONHandler writes for l.
func slogLine(l *callLine) string {
	var buf bytes.Buffer
	l.log(slog.New(slog.NewJSONHandler(&buf, nil)))
	return buf.String()
}

func fastLine(l *callLine) string {
	var buf bytes.Buffer
	if err := l.writeTo(&buf); err != nil {
		panic(err)
	}
	return buf.String()
}

var awkward = []string{
	"", "plain", `quote " and \ backslash`, "tab\tnew\nline\rcr", "\x00\x01\x1f\x7f",
	"caf\u00e9 \u65e5\u672c", "\u2028\u2029", "bad \xff\xfe utf8", "<html>&amp;", "emoji \U0001F600",
	"\xed\xa0\x80", // a surrogate half: invalid UTF-8
}

// TestCallLineIsSlogs: the hand-written call line is byte for byte what
// slog's JSONHandler writes, for awkward strings in every field, both
// levels, with and without the optional fields.
func TestCallLineIsSlogs(t *testing.T) {
	at := time.Date(2026, 11, 27, 5, 6, 7, 891_234_567, time.FixedZone("x", 3600))
	rnd := rand.New(rand.NewPCG(1, 2))
	pick := func() string { return awkward[rnd.IntN(len(awkward))] }
	for i := range 2000 {
		l := &callLine{
			at:       at.Add(time.Duration(rnd.Int64N(int64(time.Hour)))),
			errLevel: i%2 == 0,
			reqID:    pick(), method: pick(), tenant: pick(), model: pick(), region: pick(),
			backend: pick(), source: pick(), code: pick(),
			attempts: rnd.IntN(5), latencyUS: rnd.Int64N(1e9) - 1e3,
		}
		if i%3 == 0 {
			l.traceID = pick() + "x"
		}
		if i%5 == 0 {
			l.errMsg = pick() + "y"
		}
		if i%4 == 0 {
			l.usage = true
			l.tokens = spend.Tokens{Prompt: rnd.Int64N(1e6), Completion: rnd.Int64N(1e4), CacheHit: rnd.Int64N(1e6), Reasoning: rnd.Int64N(1e4)}
		}
		want, got := slogLine(l), fastLine(l)
		if got != want {
			t.Fatalf("line %d differs:\n got %q\nwant %q", i, got, want)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(got), &v); err != nil {
			t.Fatalf("line %d is not JSON: %v: %q", i, err, got)
		}
	}
}

func FuzzCallLine(f *testing.F) {
	for _, s := range awkward {
		f.Add(s, s, int64(7))
	}
	f.Fuzz(func(t *testing.T, a, b string, n int64) {
		l := &callLine{at: time.Unix(0, n), reqID: a, model: b, errMsg: a + b, latencyUS: n, attempts: int(n % 7)}
		if got, want := fastLine(l), slogLine(l); got != want {
			t.Fatalf("differs:\n got %q\nwant %q", got, want)
		}
	})
}

func BenchmarkCallLine(b *testing.B) {
	l := &callLine{at: time.Now(), reqID: "0123456789abcdef", method: "Complete", tenant: "default", model: "deepseek-chat",
		region: "eu-west", backend: "eu-west-1", attempts: 1, source: "live", latencyUS: 1234, code: "OK"}
	discard := slog.New(slog.NewJSONHandler(bytes.NewBuffer(nil), nil))
	var sink bytes.Buffer
	b.Run("hand-written", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink.Reset()
			l.writeTo(&sink)
		}
	})
	b.Run("slog", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l.log(discard)
		}
	})
}
