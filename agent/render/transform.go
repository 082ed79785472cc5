package render

import (
	"context"
	"fmt"
	"regexp"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// clusterScoped are the kinds of Kubernetes (1.37) that are not namespaced,
// for when Options.IsNamespaced is nil. Any other kind counts as
// namespaced, as custom resources mostly are; a CRD in the render, or a
// RESTMapper in the apply step, knows better.
var clusterScoped = map[schema.GroupKind]bool{
	{Group: "", Kind: "Namespace"}:                                                    true,
	{Group: "", Kind: "Node"}:                                                         true,
	{Group: "", Kind: "PersistentVolume"}:                                             true,
	{Group: "", Kind: "ComponentStatus"}:                                              true,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"}:                         true,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}:                  true,
	{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}:                 true,
	{Group: "apiregistration.k8s.io", Kind: "APIService"}:                             true,
	{Group: "admissionregistration.k8s.io", Kind: "ValidatingWebhookConfiguration"}:   true,
	{Group: "admissionregistration.k8s.io", Kind: "MutatingWebhookConfiguration"}:     true,
	{Group: "admissionregistration.k8s.io", Kind: "ValidatingAdmissionPolicy"}:        true,
	{Group: "admissionregistration.k8s.io", Kind: "ValidatingAdmissionPolicyBinding"}: true,
	{Group: "admissionregistration.k8s.io", Kind: "MutatingAdmissionPolicy"}:          true,
	{Group: "admissionregistration.k8s.io", Kind: "MutatingAdmissionPolicyBinding"}:   true,
	{Group: "storage.k8s.io", Kind: "StorageClass"}:                                   true,
	{Group: "storage.k8s.io", Kind: "CSIDriver"}:                                      true,
	{Group: "storage.k8s.io", Kind: "CSINode"}:                                        true,
	{Group: "storage.k8s.io", Kind: "VolumeAttachment"}:                               true,
	{Group: "storage.k8s.io", Kind: "VolumeAttributesClass"}:                          true,
	{Group: "scheduling.k8s.io", Kind: "PriorityClass"}:                               true,
	{Group: "networking.k8s.io", Kind: "IngressClass"}:                                true,
	{Group: "networking.k8s.io", Kind: "IPAddress"}:                                   true,
	{Group: "networking.k8s.io", Kind: "ServiceCIDR"}:                                 true,
	{Group: "node.k8s.io", Kind: "RuntimeClass"}:                                      true,
	{Group: "certificates.k8s.io", Kind: "CertificateSigningRequest"}:                 true,
	{Group: "certificates.k8s.io", Kind: "ClusterTrustBundle"}:                        true,
	{Group: "flowcontrol.apiserver.k8s.io", Kind: "FlowSchema"}:                       true,
	{Group: "flowcontrol.apiserver.k8s.io", Kind: "PriorityLevelConfiguration"}:       true,
	{Group: "resource.k8s.io", Kind: "DeviceClass"}:                                   true,
	{Group: "resource.k8s.io", Kind: "ResourceSlice"}:                                 true,
	{Group: "storagemigration.k8s.io", Kind: "StorageVersionMigration"}:               true,
	{Group: "internal.apiserver.k8s.io", Kind: "StorageVersion"}:                      true,
}

// scope answers "is this kind namespaced?" for one render, asking each
// kind once.
type scope struct {
	crds  map[schema.GroupKind]bool // from CRDs in the render: namespaced?
	ask   func(schema.GroupVersionKind) (bool, error)
	known map[schema.GroupVersionKind]bool
}

func newScope(items []*item, ask func(schema.GroupVersionKind) (bool, error)) *scope {
	s := &scope{crds: make(map[schema.GroupKind]bool), ask: ask, known: make(map[schema.GroupVersionKind]bool)}
	for _, it := range items {
		gvk := it.obj.GroupVersionKind()
		if gvk.Group != "apiextensions.k8s.io" || gvk.Kind != "CustomResourceDefinition" {
			continue
		}
		group, _ := nested(it.obj.Object, "spec", "group").(string)
		kind, _ := nested(it.obj.Object, "spec", "names", "kind").(string)
		sc, _ := nested(it.obj.Object, "spec", "scope").(string)
		if kind != "" {
			s.crds[schema.GroupKind{Group: group, Kind: kind}] = sc != "Cluster"
		}
	}
	return s
}

func (s *scope) namespaced(gvk schema.GroupVersionKind) (bool, error) {
	if ns, ok := s.crds[gvk.GroupKind()]; ok {
		return ns, nil
	}
	if ns, ok := s.known[gvk]; ok {
		return ns, nil
	}
	var ns bool
	if s.ask == nil {
		ns = !clusterScoped[gvk.GroupKind()]
	} else {
		var err error
		if ns, err = s.ask(gvk); err != nil {
			return false, err
		}
	}
	s.known[gvk] = ns
	return ns, nil
}

// namespacedItem is namespaced for it's kind, with an error naming it.
func (s *scope) namespacedItem(it *item) (bool, error) {
	gvk := it.obj.GroupVersionKind()
	ns, err := s.namespaced(gvk)
	if err != nil {
		return false, fmt.Errorf("render %s: is %s namespaced: %w", it.source(), gvk.Kind, err)
	}
	return ns, nil
}

func nested(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

// defaultNamespace gives namespaced objects without a namespace the
// assignment's.
func defaultNamespace(ctx context.Context, items []*item, namespace string, s *scope) error {
	if namespace == "" {
		return nil
	}
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return err
		}
		if it.obj.GetNamespace() != "" {
			continue
		}
		ns, err := s.namespacedItem(it)
		if err != nil {
			return err
		}
		if ns {
			it.obj.SetNamespace(namespace)
		}
	}
	return nil
}

// checkDuplicates fails if two objects are the same object: same group,
// kind, namespace (for namespaced kinds) and name. The error names both
// places.
func checkDuplicates(ctx context.Context, items []*item, s *scope) error {
	seen := make(map[string]*item, len(items))
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return err
		}
		ns, err := s.namespacedItem(it)
		if err != nil {
			return err
		}
		gk := it.obj.GroupVersionKind().GroupKind()
		id := fmt.Sprintf("%s %s", gk.String(), it.obj.GetName())
		if ns && it.obj.GetNamespace() != "" {
			id = fmt.Sprintf("%s %s/%s", gk.String(), it.obj.GetNamespace(), it.obj.GetName())
		}
		if first, dup := seen[id]; dup {
			return errorf(it.path, it.line, "%s: %s is also defined in %s", it.what, id, first.source())
		}
		seen[id] = it
	}
	return nil
}

// varRef is a ${name} reference. Names are what the assignment's variables
// map holds: "cluster.name", "cluster.labels.topology.kubernetes.io/zone".
var varRef = regexp.MustCompile(`\$\{([^{}$]+)\}`)

// substitute replaces ${name} in the string values of v (not in keys) by
// vars[name], in one pass: a substituted value is not searched again, and
// a reference to a name vars lacks stays as it is. Working on values rather
// than on the YAML text means a variable can never add structure.
func substitute(v any, vars map[string]string) any {
	if len(vars) == 0 {
		return v
	}
	switch x := v.(type) {
	case string:
		return varRef.ReplaceAllStringFunc(x, func(ref string) string {
			if val, ok := vars[ref[2:len(ref)-1]]; ok {
				return val
			}
			return ref
		})
	case map[string]any:
		for k, e := range x {
			x[k] = substitute(e, vars)
		}
	case []any:
		for i, e := range x {
			x[i] = substitute(e, vars)
		}
	}
	return v
}
