package render

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/resid"
	"sigs.k8s.io/yaml"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// sourceAnnotation carries an object's index in the render through
// Kustomize, so errors after patching still name the file it came from.
// It is removed before Render returns.
const sourceAnnotation = "render.drover.dev/source-index"

// applyPatches applies the assignment's patches, in order, to items: the
// objects and a kustomization listing the patches go into an in-memory
// file system and Kustomize builds it, so the one patch engine of
// Kustomize applications also applies overrides (strategic merge and JSON
// 6902 patches, targets by group, version, kind, name, namespace and label
// selector). Patches may delete objects ($patch: delete) but not add any.
func applyPatches(ctx context.Context, items []*item, patches []*droverv1.KustomizePatch) ([]*item, error) {
	kpatches := make([]types.Patch, len(patches))
	for i, p := range patches {
		if strings.TrimSpace(p.GetPatch()) == "" {
			return nil, errorf("", 0, "patches[%d].patch: must not be empty", i)
		}
		kpatches[i] = types.Patch{Patch: p.GetPatch(), Target: selector(p.GetTarget())}
	}

	var resources strings.Builder
	for i, it := range items {
		obj := it.obj.DeepCopy()
		ann := obj.GetAnnotations()
		if ann == nil {
			ann = make(map[string]string, 1)
		}
		ann[sourceAnnotation] = strconv.Itoa(i)
		obj.SetAnnotations(ann)
		data, err := obj.MarshalJSON()
		if err != nil {
			return nil, errorf(it.path, it.line, "%s: %v", it.what, err)
		}
		// JSON is YAML: one document per object.
		resources.WriteString("---\n")
		resources.Write(data)
		resources.WriteString("\n")
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, err := build(resources.String(), kpatches)
	if err != nil {
		// Find the first patch that fails, to name it; the work is only
		// repeated on the error path.
		for i := range kpatches {
			if _, perr := build(resources.String(), kpatches[:i+1]); perr != nil {
				return nil, errorf("", 0, "patches[%d]: %v", i, perr)
			}
		}
		return nil, errorf("", 0, "patches: %v", err)
	}
	for _, it := range out {
		ann := it.obj.GetAnnotations()
		idx, err := strconv.Atoi(ann[sourceAnnotation])
		if err != nil || idx < 0 || idx >= len(items) {
			it.path, it.what = "", "made by a patch"
		} else {
			orig := items[idx]
			it.path, it.line, it.what = orig.path, orig.line, orig.what
		}
		delete(ann, sourceAnnotation)
		if len(ann) == 0 {
			ann = nil
		}
		it.obj.SetAnnotations(ann)
		if err := validate(it); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// build runs Kustomize over resources (YAML) with patches.
func build(resources string, patches []types.Patch) ([]*item, error) {
	k := types.Kustomization{
		TypeMeta:  types.TypeMeta{APIVersion: types.KustomizationVersion, Kind: types.KustomizationKind},
		Resources: []string{"resources.yaml"},
		Patches:   patches,
	}
	kdata, err := yaml.Marshal(k)
	if err != nil {
		return nil, err
	}
	fsys := filesys.MakeFsInMemory()
	if err := fsys.WriteFile("/render/resources.yaml", []byte(resources)); err != nil {
		return nil, err
	}
	if err := fsys.WriteFile("/render/kustomization.yaml", kdata); err != nil {
		return nil, err
	}
	kustomizeMu.Lock()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, "/render")
	kustomizeMu.Unlock()
	if err != nil {
		return nil, err
	}
	return fromResMap(m, func(i int) *item { return &item{what: fmt.Sprintf("object %d after patches", i+1)} })
}

// selector converts a patch target; nil or empty means none (the patch
// names its target itself).
func selector(t *droverv1.PatchTarget) *types.Selector {
	if t == nil {
		return nil
	}
	s := &types.Selector{
		ResId: resid.ResId{
			Gvk:       resid.Gvk{Group: t.GetGroup(), Version: t.GetVersion(), Kind: t.GetKind()},
			Name:      t.GetName(),
			Namespace: t.GetNamespace(),
		},
		LabelSelector: t.GetLabelSelector(),
	}
	if *s == (types.Selector{}) {
		return nil
	}
	return s
}
