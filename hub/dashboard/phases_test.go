package dashboard

import (
	"testing"

	"github.com/drover-dev/drover/hub/rollout"
)

// Every phase the rollout planner can report has a glyph and a word on the
// page; none shows as "?".
func TestRolloutPhasesAllShown(t *testing.T) {
	for _, p := range rollout.Phases {
		if st := phaseState(rolloutPhases, string(p)); st.Glyph == "?" {
			t.Errorf("rollout phase %q has no badge", p)
		}
	}
	for _, p := range rollout.WavePhases {
		if st := phaseState(wavePhases, string(p)); st.Glyph == "?" {
			t.Errorf("wave phase %q has no badge", p)
		}
	}
	for _, p := range rollout.ClusterPhases {
		if st := clusterPhaseState(string(p)); st.Glyph == "?" {
			t.Errorf("cluster phase %q has no badge", p)
		}
	}
}
