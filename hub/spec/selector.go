package spec

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Selector turns the API's selector into apimachinery's, so users
// get exactly kubectl's semantics. nil selects nothing (metav1's rule for a
// nil *LabelSelector); an empty one selects everything.
func Selector(sel *droverv1.LabelSelector) (labels.Selector, error) {
	if sel == nil {
		return labels.Nothing(), nil
	}
	return metav1.LabelSelectorAsSelector(toMetaSelector(sel))
}

func toMetaSelector(sel *droverv1.LabelSelector) *metav1.LabelSelector {
	ls := &metav1.LabelSelector{MatchLabels: sel.GetMatchLabels()}
	for _, r := range sel.GetMatchExpressions() {
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
			Key:      r.GetKey(),
			Operator: metav1.LabelSelectorOperator(r.GetOperator()),
			Values:   r.GetValues(),
		})
	}
	return ls
}
