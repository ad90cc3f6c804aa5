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

// relay opens a stream on a.b and forwards it to send. Before the first chunk
// a failure is not committed, so the router may try elsewhere; after it, the
// stream belongs to a.b and a failure ends the call. a.timeout bounds the
// wait for the first chunk and every gap between chunks.
func relay(ctx context.Context, a *attempt, req *detourv1.CompleteRequest, send func(*detourv1.CompleteChunk) error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(a.timeout, func() { cancel(errIdle) })
	defer idle.Stop()
	start := time.Now()

	fail := func(err error) {
		a.err, a.class = err, breaker.Classify(err)
		if errors.Is(context.Cause(ctx), errIdle) {
			a.err, a.class = fmt.Errorf("backend %s: %w", a.b.cfg.Name, errIdle), breaker.Down
		}
	}
	st, err := a.b.prov.Stream(ctx, req)
	if err != nil {
		fail(err)
		return
	}
	defer st.Close()
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			if !a.committed {
				a.err, a.class = fmt.Errorf("backend %s: stream ended before any chunk", a.b.cfg.Name), breaker.Failed
				return
			}
			a.class = breaker.OK
			return
		}
		if err != nil {
			fail(err)
			return
		}
		if !a.committed {
			a.ttfc = time.Since(start)
		}
		ch.ServedBy, ch.Attempts = a.b.servedBy, int32(a.n)
		ch.Source = provenance(a.src, ch.GetSource())
		a.committed = true
		// The gap timer measures the backend, not the caller: it does not
		// run while detour waits for a slow reader to take the chunk.
		idle.Stop()
		if err := send(ch); err != nil {
			// The caller is gone or its stream broke: not the backend's fault.
			a.err, a.class = err, breaker.Canceled
			return
		}
		idle.Reset(a.timeout)
	}
}
