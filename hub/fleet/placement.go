package fleet

import (
	"fmt"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Placed reports whether spec places its application on the cluster: the
// cluster is named in spec.placement.clusterNames, or the placement selector
// matches its labels. Selector semantics are Kubernetes': an empty selector
// ({}) selects every cluster, an absent one selects none. An invalid
// selector selects none. It compiles the selector on every call; the Fleet
// compiles once per application.
func Placed(spec *droverv1.ApplicationSpec, clusterName string, lbls map[string]string) bool {
	p, err := compilePlacement(spec.GetPlacement())
	if err != nil {
		// Only names then: a broken selector must not place anything.
		p = placement{names: p.names, selector: labels.Nothing()}
	}
	return p.matches(clusterName, labels.Set(lbls))
}

// placement is a compiled spec.placement.
type placement struct {
	names    map[string]struct{}
	selector labels.Selector
}

func (p placement) matches(clusterName string, lbls labels.Set) bool {
	if _, ok := p.names[clusterName]; ok {
		return true
	}
	return p.selector.Matches(lbls)
}

// compilePlacement always returns usable names; on error the selector is
// unusable and the caller decides.
func compilePlacement(pl *droverv1.Placement) (placement, error) {
	p := placement{names: make(map[string]struct{}, len(pl.GetClusterNames()))}
	for _, n := range pl.GetClusterNames() {
		p.names[n] = struct{}{}
	}
	sel, err := spec.Selector(pl.GetSelector())
	if err != nil {
		return p, fmt.Errorf("placement selector: %w", err)
	}
	p.selector = sel
	return p, nil
}
