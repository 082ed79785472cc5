package apply

import (
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// IsNamespaced reports whether objects of gvk live in a namespace, from the
// cluster's discovery information, so rendering can give the default
// namespace only to namespaced objects.
func (a *Applier) IsNamespaced(gvk schema.GroupVersionKind) (bool, error) {
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return false, err
	}
	return m.Scope.Name() == meta.RESTScopeNameNamespace, nil
}
