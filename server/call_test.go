package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/detour-dev/detour/internal/testkit"
	"github.com/detour-dev/detour/regions"
)

// TestRequestID: the log line carries the caller's x-request-id, or one
// detour made; the response header carries it only with ReturnRequestID.
func TestRequestID(t *testing.T) {
	for _, ret := range []bool{false, true} {
		var logs testkit.Buffer
		fx := startAdmit(t, regions.LimitPolicy{}, Options{LogCalls: true, ReturnRequestID: ret, CallLog: &logs})
		fx.openGate()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()

		var hdr metadata.MD
		octx := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "caller-id-1")
		if _, err := fx.client.Complete(octx, admitReq, grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		got := hdr.Get(RequestIDKey)
		if ret && (len(got) != 1 || got[0] != "caller-id-1") {
			t.Errorf("ReturnRequestID: header %s = %q, want the caller's id", RequestIDKey, got)
		}
		if !ret && len(got) != 0 {
			t.Errorf("header %s = %q without ReturnRequestID, want none", RequestIDKey, got)
		}
		if !strings.Contains(logs.String(), `"request_id":"caller-id-1"`) {
			t.Errorf("log lacks the caller's request id: %s", logs.String())
		}

		// No id from the caller: detour makes one, logs it, and (only when
		// asked) returns it.
		hdr = nil
		if _, err := fx.client.Complete(ctx, admitReq, grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		got = hdr.Get(RequestIDKey)
		if ret {
			if len(got) != 1 || len(got[0]) != 16 {
				t.Fatalf("ReturnRequestID: made id %q, want 16 hex digits", got)
			}
			if !strings.Contains(logs.String(), `"request_id":"`+got[0]+`"`) {
				t.Errorf("log lacks the made id %s: %s", got[0], logs.String())
			}
		} else if len(got) != 0 {
			t.Errorf("header %s = %q without ReturnRequestID, want none", RequestIDKey, got)
		}
		if n := strings.Count(logs.String(), `"request_id":"`); n != 2 {
			t.Errorf("%d call lines with a request id, want 2: %s", n, logs.String())
		}
	}
}
