package apply

import (
	"testing"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestRollUpOrder(t *testing.T) {
	// From best to worst, as documented on healthRank.
	order := []droverv1.Health{
		droverv1.Health_HEALTH_HEALTHY,
		droverv1.Health_HEALTH_SUSPENDED,
		droverv1.Health_HEALTH_PROGRESSING,
		droverv1.Health_HEALTH_UNKNOWN,
		droverv1.Health_HEALTH_MISSING,
		droverv1.Health_HEALTH_DEGRADED,
	}
	for i, better := range order {
		for _, worst := range order[i+1:] {
			if got := rollUp(better, worst); got != worst {
				t.Errorf("rollUp(%s, %s) = %s, want %s", better, worst, got, worst)
			}
			if got := rollUp(worst, better); got != worst {
				t.Errorf("rollUp(%s, %s) = %s, want %s", worst, better, got, worst)
			}
		}
	}
	tests := []struct {
		name string
		in   []droverv1.Health
		want droverv1.Health
	}{
		{"no objects", nil, droverv1.Health_HEALTH_HEALTHY},
		{"all healthy", []droverv1.Health{droverv1.Health_HEALTH_HEALTHY, droverv1.Health_HEALTH_HEALTHY}, droverv1.Health_HEALTH_HEALTHY},
		{"unspecified counts as unknown", []droverv1.Health{droverv1.Health_HEALTH_PROGRESSING, droverv1.Health_HEALTH_UNSPECIFIED}, droverv1.Health_HEALTH_UNSPECIFIED},
		{"one degraded among many", []droverv1.Health{
			droverv1.Health_HEALTH_HEALTHY, droverv1.Health_HEALTH_MISSING, droverv1.Health_HEALTH_DEGRADED, droverv1.Health_HEALTH_UNKNOWN,
		}, droverv1.Health_HEALTH_DEGRADED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rollUp(tt.in...); got != tt.want {
				t.Errorf("rollUp(%v) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestHealthOf(t *testing.T) {
	tests := []struct {
		in   status.Status
		want droverv1.Health
	}{
		{status.CurrentStatus, droverv1.Health_HEALTH_HEALTHY},
		{status.InProgressStatus, droverv1.Health_HEALTH_PROGRESSING},
		{status.FailedStatus, droverv1.Health_HEALTH_DEGRADED},
		{status.NotFoundStatus, droverv1.Health_HEALTH_MISSING},
		{status.TerminatingStatus, droverv1.Health_HEALTH_PROGRESSING},
		{status.UnknownStatus, droverv1.Health_HEALTH_UNKNOWN},
	}
	for _, tt := range tests {
		if got := healthOf(tt.in); got != tt.want {
			t.Errorf("healthOf(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestObjectHealth(t *testing.T) {
	tests := []struct {
		name string
		yaml string // empty: the object does not exist
		want droverv1.Health
	}{
		{name: "missing", want: droverv1.Health_HEALTH_MISSING},
		{name: "config map", want: droverv1.Health_HEALTH_HEALTHY, yaml: `
apiVersion: v1
kind: ConfigMap
metadata: {name: c, namespace: ns}
`},
		{name: "suspended cron job", want: droverv1.Health_HEALTH_SUSPENDED, yaml: `
apiVersion: batch/v1
kind: CronJob
metadata: {name: c, namespace: ns, generation: 1}
spec: {suspend: true, schedule: "* * * * *"}
status: {}
`},
		{name: "paused deployment", want: droverv1.Health_HEALTH_SUSPENDED, yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns, generation: 2}
spec: {paused: true, replicas: 1}
status: {observedGeneration: 1}
`},
		{name: "deployment rolling out", want: droverv1.Health_HEALTH_PROGRESSING, yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns, generation: 2}
spec: {replicas: 1}
status: {observedGeneration: 1}
`},
		{name: "deployment past its progress deadline", want: droverv1.Health_HEALTH_DEGRADED, yaml: `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns, generation: 1}
spec: {replicas: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Progressing, status: "False", reason: ProgressDeadlineExceeded}
`},
		{name: "terminating", want: droverv1.Health_HEALTH_PROGRESSING, yaml: `
apiVersion: v1
kind: ConfigMap
metadata: {name: c, namespace: ns, deletionTimestamp: "2026-01-01T00:00:00Z"}
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h droverv1.Health
			var msg string
			if tt.yaml == "" {
				h, msg = objectHealth(nil)
			} else {
				h, msg = objectHealth(mustObject(t, tt.yaml))
			}
			if h != tt.want {
				t.Errorf("objectHealth = %s (%q), want %s", h, msg, tt.want)
			}
		})
	}
}

// A Degraded object's message says why, in the object's own words.
func TestObjectHealthSaysWhy(t *testing.T) {
	h, msg := objectHealth(mustObject(t, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns, generation: 1}
spec: {replicas: 1}
status:
  observedGeneration: 1
  conditions:
  - {type: Progressing, status: "False", reason: ProgressDeadlineExceeded, message: 'ReplicaSet "d-5d8f" has timed out progressing.'}
`))
	if want := `ProgressDeadlineExceeded: ReplicaSet "d-5d8f" has timed out progressing.`; h != droverv1.Health_HEALTH_DEGRADED || msg != want {
		t.Errorf("objectHealth = %s, %q; want Degraded, %q", h, msg, want)
	}
}
