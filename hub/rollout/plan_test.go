package rollout

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/hub/spec"
)

// render shows a plan as "canary[c1 c2]/1 europe[eu1]/1".
func render(waves []Wave) string {
	var parts []string
	for _, w := range waves {
		s := fmt.Sprintf("%s[%s]/%d", w.Name, strings.Join(w.Clusters, " "), w.MaxParallel)
		if w.Soak > 0 {
			s += " soak=" + w.Soak.String()
		}
		if w.RequireApproval {
			s += " approval"
		}
		if w.Implicit {
			s += " implicit"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name     string
		strategy *spec.Strategy
		clusters []Cluster
		want     string
	}{
		{"issue example: overlap goes to the first wave", mustParse(t, issueStrategy), fleetOf(),
			"canary[c1 c2]/1 soak=10m0s europe[eu1 eu2 eu3 eu4]/1 approval rest[us1 us2 us3 us4]/2"},
		{"no strategy: one wave of everything at once", nil, fleetOf()[:3],
			"remaining[c1 c2 eu1]/3 implicit"},
		{"no waves", &spec.Strategy{MaxFailures: spec.Count(1)}, fleetOf()[:2],
			"remaining[c1 c2]/2 implicit"},
		{"no clusters", &spec.Strategy{}, nil,
			"remaining[]/1 implicit"},
		{"clusters no wave selects go last, all at once",
			&spec.Strategy{Waves: []spec.WaveSpec{{Name: "canary", Selector: selector("ring", "canary"), MaxParallel: spec.Count(1)}}}, fleetOf()[:4],
			"canary[c1 c2]/1 remaining[eu1 eu2]/2 implicit"},
		{"empty waves stay in place",
			&spec.Strategy{Waves: []spec.WaveSpec{{Name: "mars", Selector: selector("planet", "mars"), RequireApproval: true}, {Name: "all"}}}, fleetOf()[:2],
			"mars[]/1 approval all[c1 c2]/2"},
		{"empty selector takes the rest",
			&spec.Strategy{Waves: []spec.WaveSpec{{Name: "eu", Selector: selector("region", "eu")}, {Name: "rest", Selector: &metav1.LabelSelector{}}}}, fleetOf()[:4],
			"eu[c1 eu1 eu2]/3 rest[c2]/1"},
		{"match expressions",
			&spec.Strategy{Waves: []spec.WaveSpec{{Name: "not-eu", Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "region", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"eu"}}}}}}}, fleetOf()[:4],
			"not-eu[c2]/1 remaining[c1 eu1 eu2]/3 implicit"},
		{"count is taken as written", &spec.Strategy{Waves: []spec.WaveSpec{{Name: "a", MaxParallel: spec.Count(5)}}}, fleetOf()[:2],
			"a[c1 c2]/5"},
		{"duplicate names: the first wins", &spec.Strategy{Waves: []spec.WaveSpec{{Name: "eu", Selector: selector("region", "eu")}}},
			[]Cluster{cluster("x", "region", "eu"), cluster("x", "region", "us")},
			"eu[x]/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := spec.Validate(tt.strategy); err != nil {
				t.Fatal(err)
			}
			if got := render(Plan(tt.strategy, tt.clusters)); got != tt.want {
				t.Fatalf("Plan:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestPlanPercentRounding(t *testing.T) {
	tests := []struct {
		percent, clusters, want int
	}{
		{25, 4, 1},
		{25, 10, 3}, // 2.5 rounds up
		{50, 3, 2},  // 1.5 rounds up
		{33, 3, 1},  // 0.99 rounds up
		{34, 3, 2},  // 1.02 rounds up
		{1, 10, 1},  // 0.1: at least 1
		{1, 1000, 10},
		{10, 10000, 1000},
		{100, 7, 7},
		{100, 0, 1}, // an empty wave still "has room" for one
		{50, 0, 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d%% of %d", tt.percent, tt.clusters), func(t *testing.T) {
			clusters := make([]Cluster, tt.clusters)
			for i := range clusters {
				clusters[i] = Cluster{Name: fmt.Sprintf("c%05d", i)}
			}
			s := &spec.Strategy{Waves: []spec.WaveSpec{{Name: "all", MaxParallel: spec.Percent(tt.percent)}}}
			if got := Plan(s, clusters)[0].MaxParallel; got != tt.want {
				t.Fatalf("maxParallel %d%% of %d clusters = %d, want %d", tt.percent, tt.clusters, got, tt.want)
			}
		})
	}
}

func TestFailureBudgetRounding(t *testing.T) {
	tests := []struct {
		v        spec.IntOrPercent
		clusters int
		want     int
	}{
		{spec.Count(0), 100, 0},
		{spec.Count(3), 2, 3},
		{spec.Percent(10), 15, 1}, // 1.5 rounds down: never more than stated
		{spec.Percent(10), 9, 0},
		{spec.Percent(50), 3, 1},
		{spec.Percent(100), 7, 7},
	}
	for _, tt := range tests {
		if got := tt.v.FloorOf(tt.clusters); got != tt.want {
			t.Errorf("maxFailures %s of %d clusters = %d, want %d", tt.v, tt.clusters, got, tt.want)
		}
	}
}

// TestPlanDeterministic checks that the input order does not matter and
// that Plan neither keeps nor changes its inputs.
func TestPlanDeterministic(t *testing.T) {
	s := mustParse(t, issueStrategy)
	clusters := fleetOf()
	want := Plan(s, clusters)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := slices.Clone(clusters)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		before := slices.Clone(shuffled)
		if got := Plan(s, shuffled); !reflect.DeepEqual(got, want) {
			t.Fatalf("Plan depends on input order:\n got %s\nwant %s", render(got), render(want))
		}
		if !reflect.DeepEqual(shuffled, before) {
			t.Fatal("Plan reordered its input")
		}
	}
	if s.Waves[0].Soak != 10*time.Minute {
		t.Fatal("Plan changed the strategy")
	}
}
