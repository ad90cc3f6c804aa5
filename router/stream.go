package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/detour-dev/detour/breaker"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// errIdle cancels a stream attempt that went quiet for longer than its
// attempt timeout.
var errIdle = errors.New("upstream stream idle for longer than the attempt timeout")

// relay opens a stream on b and forwards it to send. Before the first chunk a
// failure is not committed, so the router may try elsewhere; after it, the
// stream belongs to b and a failure ends the call. timeout bounds the wait
// for the first chunk and every gap between chunks.
func relay(ctx context.Context, b *backend, req *detourv1.CompleteRequest, timeout time.Duration,
	src detourv1.Source, attempts int, send func(*detourv1.CompleteChunk) error) (bool, breaker.Class, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(timeout, func() { cancel(errIdle) })
	defer idle.Stop()

	classify := func(err error) breaker.Class {
		if errors.Is(context.Cause(ctx), errIdle) {
			return breaker.Busy
		}
		return breaker.Classify(err)
	}
	st, err := b.prov.Stream(ctx, req)
	if err != nil {
		return false, classify(err), err
	}
	defer st.Close()
	sb := b.servedBy()
	sent := 0
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if sent == 0 {
				err = fmt.Errorf("backend %s: stream ended before any chunk", b.cfg.Name)
				return false, breaker.Failed, err
			}
			return true, breaker.OK, nil
		}
		if err != nil {
			if errors.Is(context.Cause(ctx), errIdle) {
				err = fmt.Errorf("backend %s: %w", b.cfg.Name, errIdle)
			}
			return sent > 0, classify(err), err
		}
		idle.Reset(timeout)
		ch.ServedBy, ch.Source, ch.Attempts = sb, src, int32(attempts)
		if err := send(ch); err != nil {
			// The caller is gone or its stream broke: not the backend's fault.
			return true, breaker.Canceled, err
		}
		sent++
	}
}
