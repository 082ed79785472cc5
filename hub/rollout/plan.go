package rollout

import (
	"cmp"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/spec"
)

// Cluster is a placed cluster as the planner sees it.
type Cluster struct {
	Name   string
	Labels map[string]string
}

// Wave is one wave of a plan: the clusters it updates, sorted by name, and
// its rules resolved against its size.
type Wave struct {
	Name     string
	Clusters []string
	// MaxParallel is how many of the wave's clusters may be updating at
	// once, at least 1.
	MaxParallel     int
	Soak            time.Duration
	RequireApproval bool
	// Implicit marks the wave Plan adds for the clusters no wave selects.
	Implicit bool
}

// Plan assigns placed clusters to the strategy's waves: each cluster to the
// first wave whose selector matches it, a wave without selector taking
// every cluster not in an earlier one. Waves keep their order and appear
// even when empty, so an approval gate still gates what follows it.
//
// Clusters that no wave selects are not left out: they make an implicit
// last wave, spec.ImplicitWave, updated all at once without soak or approval
// after every named wave, so a label nobody thought of never makes a
// cluster miss a release, and never makes it a canary either. With no
// strategy, or one without waves, that wave holds every cluster, which is
// the "no rollout" behaviour.
//
// The result is a function of the inputs only: clusters are taken by name
// (the first of duplicate names wins), whatever their order. The strategy
// should be valid; a selector that does not compile selects nothing.
func Plan(s *spec.Strategy, clusters []Cluster) []Wave {
	// Sorting positions rather than Clusters, and by position among equal
	// names, is stable without the cost of a stable sort.
	order := make([]int, len(clusters))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		return cmp.Or(strings.Compare(clusters[i].Name, clusters[j].Name), cmp.Compare(i, j))
	})
	order = slices.CompactFunc(order, func(i, j int) bool { return clusters[i].Name == clusters[j].Name })

	var specs []spec.WaveSpec
	if s != nil {
		specs = s.Waves
	}
	selectors := make([]labels.Selector, len(specs))
	waves := make([]Wave, len(specs), len(specs)+1)
	for i, w := range specs {
		selectors[i] = compileSelector(w.Selector)
		waves[i] = Wave{Name: w.Name, Soak: w.Soak, RequireApproval: w.RequireApproval}
	}
	var rest []string
	for _, ci := range order {
		c := &clusters[ci]
		set := labels.Set(c.Labels)
		i := slices.IndexFunc(selectors, func(sel labels.Selector) bool { return sel.Matches(set) })
		if i < 0 {
			rest = append(rest, c.Name)
			continue
		}
		waves[i].Clusters = append(waves[i].Clusters, c.Name)
	}
	for i := range waves {
		waves[i].MaxParallel = maxParallel(specs[i].MaxParallel, len(waves[i].Clusters))
	}
	if len(rest) > 0 || len(waves) == 0 {
		waves = append(waves, Wave{Name: spec.ImplicitWave, Clusters: rest, MaxParallel: max(len(rest), 1), Implicit: true})
	}
	return waves
}

// maxParallel resolves a wave's maxParallel; zero means the whole wave.
func maxParallel(v spec.IntOrPercent, size int) int {
	if v == (spec.IntOrPercent{}) {
		return max(size, 1)
	}
	return v.CeilOf(size)
}

// compileSelector gives kubectl's semantics, except that nil, like {},
// selects everything: a wave without selector takes the rest.
func compileSelector(sel *metav1.LabelSelector) labels.Selector {
	if sel == nil {
		return labels.Everything()
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return labels.Nothing()
	}
	return s
}
