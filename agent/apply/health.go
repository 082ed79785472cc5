package apply

import (
	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// healthRank orders health from best to worst; an application's health is
// its worst object's (an application without objects is Healthy):
//
//	Healthy < Suspended < Progressing < Unknown < Missing < Degraded
//
// Suspended is an operator's choice, so it is only just worse than
// Healthy. Unknown ranks above Progressing because a status that cannot
// be read must not make an application look closer to healthy than one
// visibly on its way there. Missing (an object that should exist does
// not) and Degraded (an object that failed) are the two that need a human.
var healthRank = map[droverv1.Health]int{
	droverv1.Health_HEALTH_HEALTHY:     0,
	droverv1.Health_HEALTH_SUSPENDED:   1,
	droverv1.Health_HEALTH_PROGRESSING: 2,
	droverv1.Health_HEALTH_UNKNOWN:     3,
	droverv1.Health_HEALTH_MISSING:     4,
	droverv1.Health_HEALTH_DEGRADED:    5,
}

// worse reports whether a is worse than b. Values outside the enum rank
// as Unknown.
func worse(a, b droverv1.Health) bool { return rank(a) > rank(b) }

func rank(h droverv1.Health) int {
	if r, ok := healthRank[h]; ok {
		return r
	}
	return healthRank[droverv1.Health_HEALTH_UNKNOWN]
}

// rollUp returns the worst of hs, Healthy for none.
func rollUp(hs ...droverv1.Health) droverv1.Health {
	worst := droverv1.Health_HEALTH_HEALTHY
	for _, h := range hs {
		if worse(h, worst) {
			worst = h
		}
	}
	return worst
}

// objectHealth computes one live object's health with kstatus (nil means
// the object does not exist):
//
//	Current → Healthy, InProgress → Progressing, Failed → Degraded,
//	NotFound → Missing, Terminating → Progressing, Unknown → Unknown.
//
// kstatus has no notion of a suspended object, so Drover adds one: an
// object with spec.suspend: true (CronJob, Flux's kinds) or a Deployment
// with spec.paused: true is Suspended unless it is Degraded.
func objectHealth(obj *unstructured.Unstructured) (droverv1.Health, string) {
	if obj == nil {
		return droverv1.Health_HEALTH_MISSING, "the object does not exist"
	}
	res, err := status.Compute(obj)
	if err != nil {
		return droverv1.Health_HEALTH_UNKNOWN, "compute status: " + err.Error()
	}
	h := healthOf(res.Status)
	if h != droverv1.Health_HEALTH_DEGRADED && suspended(obj) {
		return droverv1.Health_HEALTH_SUSPENDED, "suspended"
	}
	if h == droverv1.Health_HEALTH_DEGRADED {
		// kstatus's message is a summary ("Progress deadline exceeded");
		// the object's own condition, which it keeps, says why.
		for _, c := range res.Conditions {
			if c.Type == status.ConditionStalled && c.Message != "" {
				if c.Reason == "" {
					return h, c.Message
				}
				return h, c.Reason + ": " + c.Message
			}
		}
	}
	return h, res.Message
}

func healthOf(s status.Status) droverv1.Health {
	switch s {
	case status.CurrentStatus:
		return droverv1.Health_HEALTH_HEALTHY
	case status.InProgressStatus, status.TerminatingStatus:
		return droverv1.Health_HEALTH_PROGRESSING
	case status.FailedStatus:
		return droverv1.Health_HEALTH_DEGRADED
	case status.NotFoundStatus:
		return droverv1.Health_HEALTH_MISSING
	default:
		return droverv1.Health_HEALTH_UNKNOWN
	}
}

func suspended(obj *unstructured.Unstructured) bool {
	if s, ok, _ := unstructured.NestedBool(obj.Object, "spec", "suspend"); ok && s {
		return true
	}
	gvk := obj.GroupVersionKind()
	if gvk.Group == "apps" && gvk.Kind == "Deployment" {
		if p, ok, _ := unstructured.NestedBool(obj.Object, "spec", "paused"); ok && p {
			return true
		}
	}
	return false
}
