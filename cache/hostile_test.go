package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// TestEmptyOrUnfinishedAnswerIsNotCached: only an answer with a finish
// reason and content is stored, streamed or not.
func TestEmptyOrUnfinishedAnswerIsNotCached(t *testing.T) {
	live := detourv1.Source_SOURCE_LIVE
	tests := []struct {
		name   string
		resp   *detourv1.CompleteResponse
		chunks []*detourv1.CompleteChunk
		want   bool
	}{
		{name: "finished", resp: answer("hello"), want: true},
		{name: "no finish reason", resp: &detourv1.CompleteResponse{Content: "hello", Source: live}},
		{name: "no content", resp: &detourv1.CompleteResponse{FinishReason: "stop", Source: live}},
		{name: "empty", resp: &detourv1.CompleteResponse{Source: live}},
		{name: "stream finished", want: true, chunks: []*detourv1.CompleteChunk{
			{Delta: "Hel", Source: live}, {Delta: "lo", FinishReason: "stop", Source: live}}},
		{name: "stream without finish reason", chunks: []*detourv1.CompleteChunk{
			{Delta: "Hel", Source: live}, {Delta: "lo", Source: live}}},
		{name: "stream without content", chunks: []*detourv1.CompleteChunk{
			{FinishReason: "stop", Usage: &detourv1.Usage{TotalTokens: 1}, Source: live}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, Config{}, nil)
			p := c.Plan(request("hi"))
			if tt.chunks != nil {
				c.PutStream(p, tt.chunks)
			} else {
				c.Put(p, tt.resp)
			}
			if _, got := c.Get(context.Background(), p); got != tt.want {
				t.Errorf("stored %v, want %v", got, tt.want)
			}
		})
	}
}

// TestEndlessStreamStopsBuffering: a cacheable stream that never ends is
// relayed to its caller chunk after chunk, but the cache stops holding it
// once it passes max_entry_bytes: what the shared call keeps stays near
// that bound however long the stream runs, and nothing is stored.
func TestEndlessStreamStopsBuffering(t *testing.T) {
	const maxEntry = 64 << 10
	c := newCache(t, Config{MaxEntryBytes: maxEntry}, nil)
	p := c.Plan(request("endless"))
	chunk := &detourv1.CompleteChunk{Delta: strings.Repeat("x", 1000), Source: detourv1.Source_SOURCE_LIVE}
	// The bound, one chunk over it, and what was sent while the caller read.
	limit := int64(2*maxEntry + proto.Size(chunk))
	const want = 20 << 20 / 1000 // 20 MB relayed to the caller
	var f *flight
	var peak int64
	relayed := 0
	stop, tooMuch := errors.New("enough"), errors.New("buffered too much")
	err := c.Stream(context.Background(), p, func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		c.flights.mu.Lock()
		f = c.flights.streams[flightKey{key: p.Key}]
		c.flights.mu.Unlock()
		for {
			if err := send(proto.CloneOf(chunk)); err != nil {
				return err
			}
		}
	}, func(ch *detourv1.CompleteChunk) error {
		relayed++
		if relayed%64 == 0 {
			if peak = max(peak, held(f)); peak > limit {
				return tooMuch
			}
		}
		if relayed == want {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Stream = %v after %d chunks (%d bytes held), want the caller's own stop after %d", err, relayed, peak, want)
	}
	if s := c.Stats(); s.Stored != 0 {
		t.Errorf("Stored = %d, want 0", s.Stored)
	}
	t.Logf("relayed %d chunks; the shared call held at most %d bytes", relayed, peak)
}

// held returns the bytes of the stream chunks f holds.
func held(f *flight) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, ch := range f.chunks {
		n += int64(proto.Size(ch))
	}
	return n
}

// TestLongStreamSharedPastTheEntryBound: callers sharing a stream that
// outgrows max_entry_bytes each still get every chunk in order, at their
// own pace (the upstream waits for the slowest); a caller that comes after
// the stream outgrew the bound starts its own upstream call instead of
// joining one it could not replay from the start; the long stream is not
// stored.
func TestLongStreamSharedPastTheEntryBound(t *testing.T) {
	const maxEntry = 8 << 10
	c := newCache(t, Config{MaxEntryBytes: maxEntry}, nil)
	p := c.Plan(request("long"))
	const n = 200 // about 25 times the bound
	var calls atomic.Int32
	start := make(chan struct{})
	fn := func(ctx context.Context, send func(*detourv1.CompleteChunk) error) error {
		if calls.Add(1) > 1 {
			return send(&detourv1.CompleteChunk{Delta: "9999 own", FinishReason: "stop", Source: detourv1.Source_SOURCE_LIVE})
		}
		<-start
		for i := range n {
			ch := &detourv1.CompleteChunk{Delta: fmt.Sprintf("%04d%s", i, strings.Repeat(".", 996)), Source: detourv1.Source_SOURCE_LIVE}
			if i == n-1 {
				ch.FinishReason = "stop"
			}
			if err := send(ch); err != nil {
				return err
			}
		}
		return nil
	}
	type result struct {
		got []int
		err error
	}
	run := func(hold chan struct{}) chan result {
		out := make(chan result, 1)
		go func() {
			var got []int
			err := c.Stream(context.Background(), p, fn, func(ch *detourv1.CompleteChunk) error {
				if hold != nil {
					<-hold
				}
				var i int
				fmt.Sscanf(ch.GetDelta(), "%04d", &i)
				got = append(got, i)
				return nil
			})
			out <- result{got, err}
		}()
		return out
	}
	release := make(chan struct{})
	fast := run(nil)
	slow := run(release)
	eventually(t, "two callers on one stream", func() bool { return c.Stats().Coalesced == 1 })
	close(start)
	// The slow caller reads nothing: the stream outgrows the bound, leaves
	// the map and waits for it.
	eventually(t, "the stream to outgrow the bound", func() bool {
		c.flights.mu.Lock()
		defer c.flights.mu.Unlock()
		return c.flights.streams[flightKey{key: p.Key}] == nil
	})
	late := run(nil)
	if r := <-late; r.err != nil || len(r.got) != 1 || r.got[0] != 9999 {
		t.Errorf("late caller: %v, %v; want its own one-chunk answer", r.got, r.err)
	}
	close(release)
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	for name, ch := range map[string]chan result{"fast": fast, "slow": slow} {
		r := <-ch
		if r.err != nil {
			t.Errorf("%s caller: %v", name, r.err)
		}
		if diff := cmp.Diff(r.got, want); diff != "" {
			t.Errorf("%s caller's chunks (-got +want):\n%s", name, diff)
		}
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("%d upstream calls, want 2 (the shared one, the late caller's own)", got)
	}
	if hit, ok := c.Get(context.Background(), p); ok && hit.Response().GetContent() != "9999 own" {
		t.Errorf("the stream past the bound was stored")
	}
}
