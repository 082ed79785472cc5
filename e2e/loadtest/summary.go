package loadtest

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// Summary condenses a fleet's records.
type Summary struct {
	Agents    int `json:"agents"`
	Connected int `json:"connected"`
	// Reconnects counts streams opened beyond each agent's first.
	Reconnects int `json:"reconnects"`
	// Duplicates counts assignments that brought a version the agent had
	// already received.
	Duplicates int `json:"duplicates"`
	// NACKs counts simulated apply failures.
	NACKs int `json:"nacks"`
	// Rounds describes the n-th assignment every agent received: round 1
	// is each agent's first. Versions differ between clusters (they hash
	// each cluster's assignment), so rounds, not versions, line the fleet
	// up.
	Rounds []Round `json:"rounds"`
}

// Round is the n-th assignment across the fleet. Latencies run from its
// first arrival at any agent, since the load tool does not know when the
// change was made; a caller that does subtracts its own start.
type Round struct {
	N      int       `json:"n"`
	Agents int       `json:"agents"`
	First  time.Time `json:"first"`
	P50    Millis    `json:"p50_ms"`
	P99    Millis    `json:"p99_ms"`
	Max    Millis    `json:"max_ms"`
}

// Millis is a duration that encodes as fractional milliseconds.
type Millis time.Duration

// MarshalJSON encodes m as a number of milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, float64(m)/float64(time.Millisecond), 'f', 3, 64), nil
}

// Summarize condenses the records of agents.
func Summarize(agents []*Agent) Summary {
	s := Summary{Agents: len(agents)}
	var rounds [][]time.Time
	for _, a := range agents {
		if a == nil {
			continue
		}
		if a.Connected() {
			s.Connected++
		}
		st := a.State()
		s.Reconnects += max(st.Sessions-1, 0)
		seen := make(map[string]bool, len(st.Arrivals))
		for i, arr := range st.Arrivals {
			if seen[arr.Version] {
				s.Duplicates++
			}
			seen[arr.Version] = true
			if arr.Failed {
				s.NACKs++
			}
			if i == len(rounds) {
				rounds = append(rounds, nil)
			}
			rounds[i] = append(rounds[i], arr.At)
		}
	}
	for i, ats := range rounds {
		first := slices.MinFunc(ats, func(a, b time.Time) int { return a.Compare(b) })
		lat := make([]time.Duration, len(ats))
		for j, at := range ats {
			lat[j] = at.Sub(first)
		}
		slices.Sort(lat)
		s.Rounds = append(s.Rounds, Round{
			N: i + 1, Agents: len(ats), First: first,
			P50: Millis(Percentile(lat, 0.50)), P99: Millis(Percentile(lat, 0.99)), Max: Millis(lat[len(lat)-1]),
		})
	}
	return s
}

// Percentile returns the p-quantile of sorted by the nearest-rank method.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
