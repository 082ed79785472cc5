package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/fluxcd/cli-utils/pkg/object"
	"github.com/fluxcd/pkg/ssa"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	// FieldManager is the server-side apply field manager of every write
	// Drover makes to an application's objects.
	FieldManager = "drover"
	// LabelApplication, on an object's metadata, names the application
	// that applied it. Prune and drift detection only ever touch objects
	// carrying it.
	LabelApplication = "drover.dev/application"
	// AnnotationContentHash, on an object's metadata, is the hash of the
	// object as rendered (see contentHash).
	AnnotationContentHash = "drover.dev/content-hash"
	// AnnotationForce, set to ForceEnabled on a rendered object (or the
	// live one), lets Drover delete and recreate the object when the API
	// server refuses a change to an immutable field.
	AnnotationForce = "drover.dev/force"
	// ForceEnabled is the value of AnnotationForce that enables it.
	ForceEnabled = "enabled"

	// hashFormat versions contentHash: changing what Drover adds to an
	// object before applying it must change every hash, so that the first
	// sync after an upgrade re-applies instead of skipping.
	hashFormat = "drover-apply/v1\n"
)

// ObjectRef names one Kubernetes object. Group, Kind, Namespace and Name
// identify it; Version is the API version it is applied and read with.
type ObjectRef struct {
	Group     string
	Version   string
	Kind      string
	Namespace string // empty for cluster-scoped objects
	Name      string
}

// String formats the reference as Kind/namespace/name (Kind/name when
// cluster-scoped), as the API server's messages and ssa do.
func (r ObjectRef) String() string {
	if r.Namespace == "" {
		return r.Kind + "/" + r.Name
	}
	return r.Kind + "/" + r.Namespace + "/" + r.Name
}

// key identifies the object across API versions.
func (r ObjectRef) key() string {
	return r.Group + "/" + r.Kind + "/" + r.Namespace + "/" + r.Name
}

func (r ObjectRef) gvk() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind}
}

func (r ObjectRef) objMetadata() object.ObjMetadata {
	return object.ObjMetadata{
		Namespace: r.Namespace,
		Name:      r.Name,
		GroupKind: schema.GroupKind{Group: r.Group, Kind: r.Kind},
	}
}

// stub is an object with only the identity of r, as ssa's DeleteAll wants.
func (r ObjectRef) stub() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(r.gvk())
	u.SetNamespace(r.Namespace)
	u.SetName(r.Name)
	return u
}

func refOf(u *unstructured.Unstructured) ObjectRef {
	gvk := u.GroupVersionKind()
	return ObjectRef{
		Group:     gvk.Group,
		Version:   gvk.Version,
		Kind:      gvk.Kind,
		Namespace: u.GetNamespace(),
		Name:      u.GetName(),
	}
}

func isNamespace(r ObjectRef) bool { return r.Group == "" && r.Kind == "Namespace" }

// desiredObject is one rendered object on its way to the cluster, and what
// one Sync learns about it.
type desiredObject struct {
	ref ObjectRef
	// obj is what is applied: the rendered object with Drover's label and
	// annotation added.
	obj *unstructured.Unstructured
	// hash is contentHash of the rendered object.
	hash string

	// Filled in by the plan.
	prev    *entry // the inventory's entry, nil if the object is new
	drift   string // why the live object differs from the last apply, "" if it does not
	send    bool   // the object goes to the API server in this Sync
	done    bool   // it was sent, and the API server has it as rendered
	healed  bool   // it was sent because it drifted and selfHeal is on
	failure error  // the API server or the mapper refused it

	// final is the live object after this Sync: the apply response, or
	// what was read from the cluster.
	final *unstructured.Unstructured
}

// validateApp checks an application name: it becomes a label value on
// every object and part of the inventory's name.
func validateApp(app string) error {
	if app == "" {
		return errors.New("application name is empty")
	}
	if errs := validation.IsValidLabelValue(app); len(errs) > 0 {
		return fmt.Errorf("application name %q: %s", app, strings.Join(errs, "; "))
	}
	return nil
}

// serverFields are metadata fields the API server owns. A render copied
// from a live object carries them; applying them would fail (a stale
// resourceVersion) or mean nothing, so they are dropped before hashing.
var serverFields = []string{"resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"}

// prepare validates the rendered objects and returns what to apply, in
// ssa's apply order. It never changes objs. Objects of kinds the cluster
// does not serve (and that no CRD of the render defines) fail here, before
// anything is written.
func (s *session) prepare(objs []*unstructured.Unstructured) ([]*desiredObject, error) {
	copies := make([]*unstructured.Unstructured, 0, len(objs))
	for i, o := range objs {
		if err := validateObject(o); err != nil {
			return nil, fmt.Errorf("objs[%d]: %w", i, err)
		}
		c := o.DeepCopy()
		for _, f := range serverFields {
			unstructured.RemoveNestedField(c.Object, "metadata", f)
		}
		copies = append(copies, c)
	}
	s.renderCRDs = crdScopes(copies)

	var unknown []*ObjectError
	seen := make(map[string]int, len(copies))
	desired := make([]*desiredObject, 0, len(copies))
	for i, c := range copies {
		namespaced, err := s.namespaced(c.GroupVersionKind(), s.renderCRDs)
		if err != nil {
			if !meta.IsNoMatchError(err) {
				return nil, fmt.Errorf("map %s: %w", refOf(c), err)
			}
			unknown = append(unknown, &ObjectError{Object: refOf(c), Err: err})
			namespaced = c.GetNamespace() != ""
		}
		switch {
		case !namespaced:
			// The API server ignores it, and the object's identity must
			// match the live object's.
			c.SetNamespace("")
		case c.GetNamespace() == "":
			c.SetNamespace(s.a.opts.DefaultNamespace)
		}
		ref := refOf(c)
		if j, dup := seen[ref.key()]; dup {
			return nil, fmt.Errorf("objs[%d]: %s is also objs[%d]: an application renders each object once", i, ref, j)
		}
		seen[ref.key()] = i

		hash, err := contentHash(c)
		if err != nil {
			return nil, fmt.Errorf("objs[%d]: %s: %w", i, ref, err)
		}
		labels := c.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[LabelApplication] = s.app
		c.SetLabels(labels)
		annotations := c.GetAnnotations()
		if annotations == nil {
			annotations = map[string]string{}
		}
		annotations[AnnotationContentHash] = hash
		c.SetAnnotations(annotations)
		desired = append(desired, &desiredObject{ref: ref, obj: c, hash: hash})
	}
	if len(unknown) > 0 {
		for _, d := range desired {
			for _, u := range unknown {
				if u.Object.key() == d.ref.key() {
					d.failure = u.Err
				}
			}
		}
		return desired, objectErrors(unknown)
	}
	sortDesired(desired)
	return desired, nil
}

// validateObject checks what every rendered object needs before anything
// can be done with it.
func validateObject(o *unstructured.Unstructured) error {
	if o == nil || o.Object == nil {
		return errors.New("object is nil")
	}
	gv, err := schema.ParseGroupVersion(o.GetAPIVersion())
	switch {
	case o.GetAPIVersion() == "":
		return fmt.Errorf("apiVersion is empty (kind %q, name %q)", o.GetKind(), o.GetName())
	case err != nil:
		return fmt.Errorf("apiVersion %q: %w", o.GetAPIVersion(), err)
	case gv.Version == "":
		return fmt.Errorf("apiVersion %q has no version", o.GetAPIVersion())
	case o.GetKind() == "":
		return fmt.Errorf("kind is empty (apiVersion %q, name %q)", o.GetAPIVersion(), o.GetName())
	case o.GetName() == "":
		return fmt.Errorf("%s: metadata.name is empty (generateName is not supported: an applied object needs a stable name)", o.GetKind())
	}
	if ns := o.GetNamespace(); ns != "" {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("%s %q: metadata.namespace %q: %s", o.GetKind(), o.GetName(), ns, strings.Join(errs, "; "))
		}
	}
	return nil
}

// namespaced reports whether objects of gvk live in namespaces, asking the
// cluster, or the render's own CRDs for kinds the cluster does not serve
// yet.
func (s *session) namespaced(gvk schema.GroupVersionKind, crdScopes map[schema.GroupKind]bool) (bool, error) {
	mapping, err := s.a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err == nil {
		return mapping.Scope.Name() == meta.RESTScopeNameNamespace, nil
	}
	if !meta.IsNoMatchError(err) {
		return false, err
	}
	if namespaced, ok := crdScopes[gvk.GroupKind()]; ok {
		return namespaced, nil
	}
	// The mapper's own error differs between its first lookup and later
	// ones; this one reads the same every time.
	return false, &meta.NoKindMatchError{GroupKind: gvk.GroupKind(), SearchedVersions: []string{gvk.Version}}
}

// crdScopes returns, for every kind a CRD in objs defines, whether it is
// namespaced.
func crdScopes(objs []*unstructured.Unstructured) map[schema.GroupKind]bool {
	scopes := map[schema.GroupKind]bool{}
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" || !strings.HasPrefix(o.GetAPIVersion(), "apiextensions.k8s.io/") {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		scope, _, _ := unstructured.NestedString(o.Object, "spec", "scope")
		if kind != "" {
			scopes[schema.GroupKind{Group: group, Kind: kind}] = scope != "Cluster"
		}
	}
	return scopes
}

// contentHash is the SHA-256 of the object as rendered (server-owned
// metadata removed, namespace defaulted), as canonical JSON: encoding/json
// writes map keys sorted, so equal objects hash equally.
func contentHash(u *unstructured.Unstructured) (string, error) {
	b, err := json.Marshal(u.Object)
	if err != nil {
		return "", fmt.Errorf("hash: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(hashFormat))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sortDesired puts objects in ssa's apply order (CRDs and Namespaces
// first, webhooks last), which is also the order statuses are reported in.
func sortDesired(ds []*desiredObject) {
	sort.SliceStable(ds, func(i, j int) bool {
		return ssa.SortableMetas{ds[i].ref.objMetadata(), ds[j].ref.objMetadata()}.Less(0, 1)
	})
}
