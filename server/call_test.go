package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/detour-dev/detour/auth"
	"github.com/detour-dev/detour/internal/hostile"
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

// TestTenantFromMetadata: without the authentication interceptors the
// server names the tenant from x-detour-tenant by auth's one rule
// (auth.ValidTenant), "default" when the caller names none.
func TestTenantFromMetadata(t *testing.T) {
	cfg := &regions.Config{Regions: []regions.Region{{Name: "a", Backends: []regions.Backend{{Name: "a-1", Endpoint: upstream(t, hostile.Answer(goodAnswer))}}}}}
	fx := startHostile(t, cfg, "a")
	for _, tt := range []struct {
		tenant, logged string
		want           codes.Code
	}{
		{"", "default", codes.OK},
		{"team-a.eu_1", "team-a.eu_1", codes.OK},
		{".a", "", codes.InvalidArgument},
		{"-a", "", codes.InvalidArgument},
		{"a b", "", codes.InvalidArgument},
		{strings.Repeat("a", auth.MaxTenantLen+1), "", codes.InvalidArgument},
	} {
		ctx := callCtx(t)
		if tt.tenant != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, auth.TenantKey, tt.tenant)
		}
		_, err := fx.client.Complete(ctx, deterministic("tenant "+tt.tenant))
		st := status.Convert(err)
		if st.Code() != tt.want {
			t.Errorf("%s %q: %v (%s), want %v", auth.TenantKey, tt.tenant, st.Code(), st.Message(), tt.want)
			continue
		}
		if tt.want == codes.OK {
			if want := `"tenant":"` + tt.logged + `"`; !strings.Contains(fx.logs.String(), want) {
				t.Errorf("%s %q: the call log lacks %s:\n%s", auth.TenantKey, tt.tenant, want, fx.logs.String())
			}
			continue
		}
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField()+": "+v.GetDescription())
				}
			}
		}
		if diff := cmp.Diff(fields, []string{auth.TenantKey + ": tenant must be " + auth.TenantRule}); diff != "" {
			t.Errorf("%s %q: field violations (-got +want):\n%s", auth.TenantKey, tt.tenant, diff)
		}
	}
}
