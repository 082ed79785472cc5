package rollout

import (
	"time"

	"github.com/drover-dev/drover/hub/spec"
)

// The planner reads a spec.Strategy as hub/spec parsed and validated it;
// these give the defaults its zero values stand for.

func progressDeadline(s *spec.Strategy) time.Duration {
	if s.ProgressDeadline > 0 {
		return s.ProgressDeadline
	}
	return spec.DefaultProgressDeadline
}

func offlineTimeout(s *spec.Strategy) time.Duration {
	if s.OfflineTimeout > 0 {
		return s.OfflineTimeout
	}
	return spec.DefaultOfflineTimeout
}

func onFailure(s *spec.Strategy) spec.FailurePolicy {
	if s.OnFailure == spec.FailureRollback {
		return spec.FailureRollback
	}
	return spec.FailurePause
}
