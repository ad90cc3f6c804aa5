package server

import (
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/detour-dev/detour/spend"
)

// callLine is one call's log line. appendTo writes it byte for byte as
// slog's JSONHandler (default options) writes the same record, so that the
// lines read the same whichever way they were written (TestCallLineIsSlogs
// holds it); it costs a third of going through slog, which is a few per
// cent of detour's CPU per call.
type callLine struct {
	at                                                          time.Time
	errLevel                                                    bool
	reqID, method, tenant, model, region, backend, source, code string
	attempts                                                    int
	latencyUS                                                   int64
	traceID, errMsg                                             string // "" when absent
	usage                                                       bool   // the answer carried usage: tokens are written
	tokens                                                      spend.Tokens
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// writeTo writes the line to w in one Write.
func (l *callLine) writeTo(w io.Writer) error {
	bp := linePool.Get().(*[]byte)
	b := l.appendTo((*bp)[:0])
	_, err := w.Write(b)
	if cap(b) <= 4<<10 {
		*bp = b
		linePool.Put(bp)
	}
	return err
}

func (l *callLine) appendTo(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = l.at.AppendFormat(b, time.RFC3339Nano) // as slog's JSON handler
	b = append(b, `","level":"`...)
	if l.errLevel {
		b = append(b, "ERROR"...)
	} else {
		b = append(b, "INFO"...)
	}
	b = append(b, `","msg":"call"`...)
	b = appendField(b, "request_id", l.reqID)
	b = appendField(b, "method", l.method)
	b = appendField(b, "tenant", l.tenant)
	b = appendField(b, "model", l.model)
	b = appendField(b, "region", l.region)
	b = appendField(b, "backend", l.backend)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(l.attempts), 10)
	b = appendField(b, "source", l.source)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, l.latencyUS, 10)
	b = appendField(b, "code", l.code)
	if l.usage {
		b = appendInt(b, "prompt_tokens", l.tokens.Prompt)
		b = appendInt(b, "completion_tokens", l.tokens.Completion)
		b = appendInt(b, "cache_hit_tokens", l.tokens.CacheHit)
		b = appendInt(b, "reasoning_tokens", l.tokens.Reasoning)
	}
	if l.traceID != "" {
		b = appendField(b, "trace_id", l.traceID)
	}
	if l.errMsg != "" {
		b = appendField(b, "error", l.errMsg)
	}
	return append(b, "}\n"...)
}

func appendInt(b []byte, key string, v int64) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendField(b []byte, key, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...) // keys are fixed ASCII names
	b = append(b, '"', ':', '"')
	b = appendJSONString(b, v)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONString escapes s as slog's JSON handler does: '"', '\\' and
// control characters, invalid UTF-8 as \ufffd, U+2028 and U+2029.
func appendJSONString(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, '\\')
			switch c {
			case '\\', '"':
				b = append(b, c)
			case '\n':
				b = append(b, 'n')
			case '\r':
				b = append(b, 'r')
			case '\t':
				b = append(b, 't')
			default:
				b = append(b, 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
