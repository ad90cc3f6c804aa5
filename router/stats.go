package router

import (
	"context"
	"time"
)

// CallStats describes how a call was routed, for the caller's logs and
// metrics. The router fills it before Complete or Stream returns, except for
// cacheable calls, whose upstream call may be shared with other callers (then
// it stays zero; the answer's served_by and attempts still say who answered).
type CallStats struct {
	Attempts   int           // upstream attempts made
	Backend    string        // backend of the last attempt
	Region     string        // region of the last attempt
	Upstream   time.Duration // time spent waiting on upstream attempts
	Waited     time.Duration // time spent in retry backoff
	FirstChunk time.Duration // streams: the answering attempt's time to first chunk
}

type statsKey struct{}

// WithStats returns ctx asking the router to fill s for the call made with it.
func WithStats(ctx context.Context, s *CallStats) context.Context {
	return context.WithValue(ctx, statsKey{}, s)
}

func statsFrom(ctx context.Context) *CallStats {
	s, _ := ctx.Value(statsKey{}).(*CallStats)
	return s
}

func withoutStats(ctx context.Context) context.Context {
	if statsFrom(ctx) == nil {
		return ctx
	}
	return context.WithValue(ctx, statsKey{}, (*CallStats)(nil))
}
