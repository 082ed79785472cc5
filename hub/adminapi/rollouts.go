package adminapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-dev/drover/hub/rollout"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// RolloutController is the hub's rollout engine as the admin API sees it.
// A Controller without it answers the rollout methods with Unimplemented,
// so the Controller interface (and its fakes) need not grow.
type RolloutController interface {
	// Rollout reports an application's rollout; store.ErrNotFound when it
	// has none.
	Rollout(ctx context.Context, app string) (*droverv1.RolloutStatus, error)
	// ControlRollout applies op for actor; a *rollout.ControlError when op
	// does not apply to the rollout as it stands.
	ControlRollout(ctx context.Context, app string, op rollout.Op, actor string) (*droverv1.RolloutStatus, error)
}

// GetRollout reports where an application's rollout stands.
func (s *Server) GetRollout(ctx context.Context, req *droverv1.GetRolloutRequest) (*droverv1.GetRolloutResponse, error) {
	if req.GetApplication() == "" {
		return nil, status.Error(codes.InvalidArgument, "application: required")
	}
	rc, ok := s.ctl.(RolloutController)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this hub runs no rollouts")
	}
	r, err := rc.Rollout(ctx, req.GetApplication())
	if err != nil {
		return nil, s.rolloutStatus(fmt.Sprintf("rollout of application %q", req.GetApplication()), err)
	}
	return &droverv1.GetRolloutResponse{Rollout: r}, nil
}

// ControlRollout pauses, resumes, promotes, aborts or rolls back an
// application's rollout. The engine records the operation's events with
// the caller as their actor, which is the audit entry.
func (s *Server) ControlRollout(ctx context.Context, req *droverv1.ControlRolloutRequest) (*droverv1.ControlRolloutResponse, error) {
	if req.GetApplication() == "" {
		return nil, status.Error(codes.InvalidArgument, "application: required")
	}
	op, err := rollout.ParseOp(req.GetOp())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "op: %v", err)
	}
	rc, ok := s.ctl.(RolloutController)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this hub runs no rollouts")
	}
	r, err := rc.ControlRollout(ctx, req.GetApplication(), op, actor(ctx))
	if err != nil {
		return nil, s.rolloutStatus(fmt.Sprintf("rollout of application %q", req.GetApplication()), err)
	}
	return &droverv1.ControlRolloutResponse{Rollout: r}, nil
}

func (s *Server) rolloutStatus(op string, err error) error {
	var ce *rollout.ControlError
	if errors.As(err, &ce) {
		return status.Error(codes.FailedPrecondition, ce.Error())
	}
	return s.toStatus(op, err)
}
