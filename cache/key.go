package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"sync"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Key identifies an answer: requests with the same Key get the same answer.
type Key [sha256.Size]byte

// String returns k in hex.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// keyVersion starts every encoding; change it when the encoding or the
// normalization changes, so that old entries are no longer found.
const keyVersion = "detour.cache.v3\x00"

// KeyOf returns the canonical key of req: the SHA-256 of a length-prefixed
// binary encoding, in a fixed order, of everything that changes the answer:
//
//   - the tenant, when the cache is scoped to tenants (empty: shared);
//   - model;
//   - each message, in order: role, content, name, reasoning_content,
//     tool_call_id and its tool calls (id, type, function name and
//     arguments), and whether it is a prefix to continue;
//   - temperature and top_p, each as "unset" or its value (-0 is 0);
//   - max_tokens and max_completion_tokens;
//   - the stop sequences as a set (sorted, without duplicates);
//   - the tools, in order (type, name, description, parameters, strict),
//     tool_choice and parallel_tool_calls;
//   - response_format (type; json_schema's name, description, schema,
//     strict), thinking and reasoning_effort;
//   - frequency_penalty, presence_penalty, seed, logprobs and top_logprobs,
//     each unset or its value;
//   - extra_body;
//   - user, only when perUser is true (Config.PerUser).
//
// JSON texts (tool parameters, a JSON schema, extra_body) count without
// their insignificant whitespace; the order of their members counts, since
// it can change the answer (structured outputs follow the schema's order).
//
// Routing hints and cache hints are not part of the key: they change where
// and whether an answer comes from, not what it says. Leading and trailing
// whitespace of the model, of each role, name and content is insignificant,
// and so is the case of a role; whitespace inside a content, and any in a
// stop sequence, is significant. Every string is length-prefixed, so no two
// different normalized requests share an encoding.
//
// KeyOf does not allocate (it encodes into a pooled buffer) and is safe for
// concurrent use.
func KeyOf(req *detourv1.CompleteRequest, tenant string, perUser bool) Key {
	bp := keyBufs.Get().(*[]byte)
	b := append((*bp)[:0], keyVersion...)
	b = appendString(b, 'T', tenant)
	b = appendString(b, 'm', strings.TrimSpace(req.GetModel()))
	for _, m := range req.GetMessages() {
		b = appendString(b, 'r', strings.ToLower(strings.TrimSpace(m.GetRole())))
		b = appendString(b, 'c', strings.TrimSpace(m.GetContent()))
		b = appendString(b, 'n', strings.TrimSpace(m.GetName()))
		if m.GetPrefix() {
			b = append(b, 'X')
		}
		if m.GetReasoningContent() != "" || m.GetToolCallId() != "" || len(m.GetToolCalls()) > 0 {
			b = appendString(b, 'R', strings.TrimSpace(m.GetReasoningContent()))
			b = appendString(b, 'i', m.GetToolCallId())
			b = append(b, 'T')
			b = binary.AppendUvarint(b, uint64(len(m.GetToolCalls())))
			for _, tc := range m.GetToolCalls() {
				b = appendString(b, 'I', tc.GetId())
				b = appendString(b, 'y', orFunction(tc.GetType()))
				b = appendString(b, 'N', tc.GetFunction().GetName())
				b = appendJSON(b, 'A', tc.GetFunction().GetArguments())
			}
		}
	}
	b = appendFloat(b, 't', req.Temperature)
	b = appendFloat(b, 'p', req.TopP)
	b = append(b, 'x')
	b = binary.AppendVarint(b, int64(req.GetMaxTokens()))
	b = appendStops(b, req.GetStop())
	b = appendOptions(b, req)
	if perUser {
		b = appendString(b, 'u', req.GetUser())
	}
	k := Key(sha256.Sum256(b))
	if cap(b) <= maxPooledKeyBuf {
		*bp = b
		keyBufs.Put(bp)
	}
	return k
}

// appendOptions encodes the fields that later versions of the API added:
// one tag byte for none of them set, the common case, which stays free of
// allocations.
func appendOptions(b []byte, req *detourv1.CompleteRequest) []byte {
	if len(req.GetTools()) == 0 && req.GetToolChoice() == nil && req.ParallelToolCalls == nil &&
		req.GetResponseFormat() == nil && req.GetThinking() == nil && req.GetReasoningEffort() == "" &&
		req.FrequencyPenalty == nil && req.PresencePenalty == nil && req.Seed == nil && !req.GetLogprobs() &&
		req.TopLogprobs == nil && req.GetMaxCompletionTokens() == 0 && req.GetExtraBody() == "" {
		return append(b, 'o', 0)
	}
	b = append(b, 'o', 1)
	b = append(b, 'F')
	b = binary.AppendUvarint(b, uint64(len(req.GetTools())))
	for _, t := range req.GetTools() {
		f := t.GetFunction()
		b = appendString(b, 'y', orFunction(t.GetType()))
		b = appendString(b, 'N', f.GetName())
		b = appendString(b, 'D', f.GetDescription())
		b = appendJSON(b, 'P', f.GetParameters())
		b = appendBool(b, 'S', f.Strict)
	}
	switch c := req.GetToolChoice().GetChoice().(type) {
	case *detourv1.ToolChoice_Mode:
		b = appendString(b, 'C', c.Mode)
	case *detourv1.ToolChoice_Function:
		b = appendString(b, 'K', c.Function)
	default:
		b = append(b, '-')
	}
	b = appendBool(b, 'Q', req.ParallelToolCalls)
	if rf := req.GetResponseFormat(); rf != nil {
		b = appendString(b, 'f', rf.GetType())
		if js := rf.GetJsonSchema(); js != nil {
			b = appendString(b, 'N', js.GetName())
			b = appendString(b, 'D', js.GetDescription())
			b = appendJSON(b, 'J', js.GetSchema())
			b = appendBool(b, 'S', js.Strict)
		} else {
			b = append(b, '-')
		}
	} else {
		b = append(b, '-')
	}
	if th := req.GetThinking(); th != nil {
		b = appendString(b, 'k', th.GetType())
	} else {
		b = append(b, '-')
	}
	b = appendString(b, 'e', req.GetReasoningEffort())
	b = appendFloat(b, 'q', req.FrequencyPenalty)
	b = appendFloat(b, 'h', req.PresencePenalty)
	if req.Seed != nil {
		b = append(b, 'd', 1)
		b = binary.AppendVarint(b, req.GetSeed())
	} else {
		b = append(b, 'd', 0)
	}
	b = append(b, 'l', boolByte(req.GetLogprobs()))
	if req.TopLogprobs != nil {
		b = append(b, 'L', 1)
		b = binary.AppendVarint(b, int64(req.GetTopLogprobs()))
	} else {
		b = append(b, 'L', 0)
	}
	b = append(b, 'X')
	b = binary.AppendVarint(b, int64(req.GetMaxCompletionTokens()))
	return appendJSON(b, 'b', req.GetExtraBody())
}

func orFunction(t string) string {
	if t == "" {
		return "function"
	}
	return t
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// appendBool encodes an optional bool: unset, false or true.
func appendBool(b []byte, tag byte, v *bool) []byte {
	if v == nil {
		return append(b, tag, 0)
	}
	return append(b, tag, 1+boolByte(*v))
}

var jsonBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// appendJSON encodes JSON text without its insignificant whitespace (as
// written when it is not valid JSON).
func appendJSON(b []byte, tag byte, s string) []byte {
	if s == "" {
		return appendString(b, tag, "")
	}
	buf := jsonBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledKeyBuf {
			jsonBufs.Put(buf)
		}
	}()
	if err := json.Compact(buf, []byte(s)); err != nil {
		return appendString(b, tag, s)
	}
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(buf.Len()))
	return append(b, buf.Bytes()...)
}

// maxPooledKeyBuf keeps buffers grown by a huge prompt out of the pool.
const maxPooledKeyBuf = 64 << 10

var keyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func appendString(b []byte, tag byte, s string) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendFloat(b []byte, tag byte, f *float64) []byte {
	if f == nil {
		return append(b, tag, 0)
	}
	v := *f
	if v == 0 {
		v = 0 // -0 and 0 are the same setting
	}
	b = append(b, tag, 1)
	return binary.BigEndian.AppendUint64(b, math.Float64bits(v))
}

// appendStops encodes the stop sequences as a sorted set. The common cases
// (none, one, already sorted and distinct) do not allocate.
func appendStops(b []byte, stops []string) []byte {
	if !slices.IsSorted(stops) || hasAdjacentDup(stops) {
		stops = slices.Compact(slices.Sorted(slices.Values(stops)))
	}
	b = append(b, 's')
	b = binary.AppendUvarint(b, uint64(len(stops)))
	for _, s := range stops {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func hasAdjacentDup(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i] == s[i-1] {
			return true
		}
	}
	return false
}
