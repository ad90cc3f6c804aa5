package server

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/detour-dev/detour/fleet"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// SharedStateSource is the health of the Redis the replicas share;
// *fleet.Monitor implements it. Health must not block.
type SharedStateSource interface {
	Health() fleet.Health
}

var _ SharedStateSource = (*fleet.Monitor)(nil)

// sharedStateStatus is h as Admin.Status reports it.
func sharedStateStatus(h fleet.Health) *detourv1.SharedStateStatus {
	s := &detourv1.SharedStateStatus{
		Addr:      h.Addr,
		Checked:   h.Checked,
		Up:        h.Up,
		Errors:    h.Errors,
		LastError: h.LastError,
	}
	if !h.Since.IsZero() {
		s.Since = timestamppb.New(h.Since)
	}
	return s
}
