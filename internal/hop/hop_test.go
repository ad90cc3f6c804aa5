package hop

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "", want: 0}, {in: "0", want: 0}, {in: "4", want: 4}, {in: "1000", want: 1000},
		{in: "1001", wantErr: true}, {in: "-1", wantErr: true}, {in: "x", wantErr: true}, {in: " 1", wantErr: true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if diff := cmp.Diff([]any{got, err != nil}, []any{tt.want, tt.wantErr}); diff != "" {
			t.Errorf("Parse(%q) (-got +want):\n%s", tt.in, diff)
		}
	}
}

func TestCount(t *testing.T) {
	ctx := context.Background()
	if got := Next(ctx); got != "1" {
		t.Errorf("Next(no count) = %q, want 1", got)
	}
	if With(ctx, 0) != ctx {
		t.Error("With(ctx, 0) made a new context for nothing")
	}
	if got := Next(With(ctx, 3)); got != "4" {
		t.Errorf("Next(3) = %q, want 4", got)
	}
}

func TestRefused(t *testing.T) {
	if st := Refusal(5, 4); !Refused(st) || st.Code() != codes.FailedPrecondition {
		t.Errorf("Refusal(5, 4) = %v, not Refused", st.Proto())
	}
	if Refused(status.New(codes.FailedPrecondition, "other")) {
		t.Error("a plain FAILED_PRECONDITION counts as a hop refusal")
	}
}
