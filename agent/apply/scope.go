package apply

import (
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/drover-dev/drover/internal/retry"
)

// IsNamespaced reports whether objects of gvk live in a namespace, from the
// cluster's discovery information, so rendering can give the default
// namespace only to namespaced objects. Its error is transient when
// discovery got no answer (the API server is down, overloaded or timed
// out), and permanent when the API server answered that it does not serve
// the kind: the manifests are to fix.
func (a *Applier) IsNamespaced(gvk schema.GroupVersionKind) (bool, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		if serverFailure(err) || retry.IsTransient(err) {
			return false, retry.Transient(err)
		}
		return false, retry.Permanent(err)
	}
	return m.Scope.Name() == meta.RESTScopeNameNamespace, nil
}

// ResourceFor returns the resource that serves objects of gvk, from the
// same discovery information the applies use: for watching what was
// applied (agent/watch).
func (a *Applier) ResourceFor(gvk schema.GroupVersionKind) (schema.GroupVersionResource, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return schema.GroupVersionResource{}, err
	}
	return m.Resource, nil
}
