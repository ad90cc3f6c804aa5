package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// entry is one stored answer. It is immutable once built.
type entry struct {
	resp   *detourv1.CompleteResponse // the whole answer; never nil
	chunks []*detourv1.CompleteChunk  // the chunks when it was streamed, else nil

	stored     time.Time
	freshUntil time.Time
	staleUntil time.Time
	size       int64 // bytes accounted in the local tier
}

// Hit is an answer found in the cache. Its methods return copies, so a Hit
// may be used by one caller while others use the same cached answer.
type Hit struct {
	// Age is how long ago the answer was produced upstream.
	Age time.Duration
	// Stale reports that the answer is past its TTL (served only by
	// Cache.GetStale).
	Stale bool
	// Shared reports that the answer came from the Redis tier.
	Shared bool

	e *entry
}

func (h *Hit) source() detourv1.Source {
	if h.Stale {
		return detourv1.Source_SOURCE_STALE_CACHE
	}
	return detourv1.Source_SOURCE_CACHE
}

// Response returns the answer as a whole response: a copy of the stored one
// (its served_by still names the backend that produced it) with source
// CACHE or STALE_CACHE, attempts 0 and age set. An answer stored from a
// stream is assembled from its chunks.
func (h *Hit) Response() *detourv1.CompleteResponse {
	r := proto.CloneOf(h.e.resp)
	r.Source = h.source()
	r.Attempts = 0
	r.Age = durationpb.New(h.Age)
	return r
}

// Replay sends the answer as chunks: the stored chunks of a streamed answer,
// or one chunk holding a whole unary answer. Each is a copy with source, age
// and attempts set as in Response. Replay stops at the first error of send
// and returns it.
func (h *Hit) Replay(send func(*detourv1.CompleteChunk) error) error {
	src, age := h.source(), durationpb.New(h.Age)
	if h.e.chunks == nil {
		r := h.e.resp
		c := &detourv1.CompleteChunk{
			Id: r.GetId(), Model: r.GetModel(), Delta: r.GetContent(), ReasoningDelta: r.GetReasoningContent(),
			Logprobs: proto.CloneOf(r.GetLogprobs()), FinishReason: r.GetFinishReason(), Usage: proto.CloneOf(r.GetUsage()),
			ServedBy: proto.CloneOf(r.GetServedBy()), Source: src, Age: age,
		}
		for i, tc := range r.GetToolCalls() {
			c.ToolCallDeltas = append(c.ToolCallDeltas, &detourv1.ToolCallDelta{
				Index: int32(i), Id: tc.GetId(), Type: tc.GetType(), Function: proto.CloneOf(tc.GetFunction())})
		}
		return send(c)
	}
	for _, c := range h.e.chunks {
		c = proto.CloneOf(c)
		c.Source, c.Attempts, c.Age = src, 0, proto.CloneOf(age)
		if err := send(c); err != nil {
			return err
		}
	}
	return nil
}

// newEntry builds the entry for resp (or for chunks when resp is nil): a
// private copy, without the per-answer fields a hit rewrites.
func newEntry(resp *detourv1.CompleteResponse, chunks []*detourv1.CompleteChunk, now time.Time, ttl, stale time.Duration) *entry {
	e := &entry{stored: now, freshUntil: now.Add(ttl), staleUntil: now.Add(ttl + stale)}
	if resp != nil {
		e.resp = proto.CloneOf(resp)
		e.resp.Source, e.resp.Attempts, e.resp.Age = 0, 0, nil
		return e
	}
	e.chunks = make([]*detourv1.CompleteChunk, len(chunks))
	for i, c := range chunks {
		c = proto.CloneOf(c)
		c.Source, c.Attempts, c.Age = 0, 0, nil
		e.chunks[i] = c
	}
	e.resp = assemble(e.chunks)
	return e
}

// assemble joins a stream's chunks into the whole answer: the content,
// reasoning and logprobs in order, and the pieces of each tool call (by
// index, in the order the calls first appear) into whole calls.
func assemble(chunks []*detourv1.CompleteChunk) *detourv1.CompleteResponse {
	r := &detourv1.CompleteResponse{}
	var content, reasoning strings.Builder
	var calls map[int32]*joinedCall // by index
	var order []*joinedCall
	for _, c := range chunks {
		if r.Id == "" {
			r.Id = c.GetId()
		}
		if r.Model == "" {
			r.Model = c.GetModel()
		}
		content.WriteString(c.GetDelta())
		reasoning.WriteString(c.GetReasoningDelta())
		for _, d := range c.GetToolCallDeltas() {
			tc := calls[d.GetIndex()]
			if tc == nil {
				if calls == nil {
					calls = map[int32]*joinedCall{}
				}
				tc = &joinedCall{}
				calls[d.GetIndex()] = tc
				order = append(order, tc)
			}
			tc.add(d)
		}
		if lp := c.GetLogprobs(); lp != nil {
			if r.Logprobs == nil {
				r.Logprobs = &detourv1.Logprobs{}
			}
			r.Logprobs.Content = append(r.Logprobs.Content, lp.GetContent()...)
		}
		if c.GetFinishReason() != "" {
			r.FinishReason = c.GetFinishReason()
		}
		if c.GetUsage() != nil {
			r.Usage = c.GetUsage()
		}
		if c.GetServedBy() != nil {
			r.ServedBy = c.GetServedBy()
		}
	}
	r.Content = content.String()
	r.ReasoningContent = reasoning.String()
	for _, tc := range order {
		r.ToolCalls = append(r.ToolCalls, &detourv1.ToolCall{Id: tc.id, Type: tc.typ,
			Function: &detourv1.FunctionCall{Name: tc.name, Arguments: tc.args.String()}})
	}
	return r
}

// joinedCall is a tool call being joined from its pieces: the first id, type
// and name win, the arguments are appended.
type joinedCall struct {
	id, typ, name string
	args          strings.Builder
}

func (tc *joinedCall) add(d *detourv1.ToolCallDelta) {
	if tc.id == "" {
		tc.id = d.GetId()
	}
	if tc.typ == "" {
		tc.typ = d.GetType()
	}
	if tc.name == "" {
		tc.name = d.GetFunction().GetName()
	}
	tc.args.WriteString(d.GetFunction().GetArguments())
}

// The encoding of an entry, in Redis:
//
//	"dc1" | stored, fresh until, stale until (Unix ns, 8 bytes each, big endian)
//	| uvarint n chunks | n × (uvarint len | CompleteChunk)
//	| uvarint len | CompleteResponse (only when n is 0)
const encMagic = "dc1"

var errCorrupt = errors.New("cache: corrupt entry")

func (e *entry) encode() ([]byte, error) {
	b := make([]byte, 0, 64+proto.Size(e.resp)*2)
	b = append(b, encMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.stored.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(e.freshUntil.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(e.staleUntil.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(e.chunks)))
	var err error
	opts := proto.MarshalOptions{Deterministic: true, UseCachedSize: false}
	appendMsg := func(m proto.Message) {
		if err != nil {
			return
		}
		b = binary.AppendUvarint(b, uint64(opts.Size(m)))
		b, err = opts.MarshalAppend(b, m)
	}
	for _, c := range e.chunks {
		appendMsg(c)
	}
	if len(e.chunks) == 0 {
		appendMsg(e.resp)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: encode entry: %w", err)
	}
	return b, nil
}

func decodeEntry(b []byte) (*entry, error) {
	if len(b) < len(encMagic)+24 || string(b[:len(encMagic)]) != encMagic {
		return nil, errCorrupt
	}
	size := int64(len(b))
	b = b[len(encMagic):]
	ts := func() time.Time {
		t := time.Unix(0, int64(binary.BigEndian.Uint64(b)))
		b = b[8:]
		return t
	}
	e := &entry{stored: ts(), freshUntil: ts(), staleUntil: ts(), size: size}
	next := func() ([]byte, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, errCorrupt
		}
		m := b[k : k+int(n)]
		b = b[k+int(n):]
		return m, nil
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	b = b[k:]
	for range n {
		m, err := next()
		if err != nil {
			return nil, err
		}
		c := &detourv1.CompleteChunk{}
		if err := proto.Unmarshal(m, c); err != nil {
			return nil, fmt.Errorf("%w: %w", errCorrupt, err)
		}
		e.chunks = append(e.chunks, c)
	}
	if n > 0 {
		e.resp = assemble(e.chunks)
		return e, nil
	}
	m, err := next()
	if err != nil {
		return nil, err
	}
	e.resp = &detourv1.CompleteResponse{}
	if err := proto.Unmarshal(m, e.resp); err != nil {
		return nil, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	return e, nil
}
