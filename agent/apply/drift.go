package apply

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Drift detection without a server round trip per object.
//
// After every apply, Drover records in the inventory a fingerprint of the
// object as the API server stored it: the SHA-256 of the field set of the
// "drover" Apply entry in metadata.managedFields, with the live value of
// every one of those fields. The fingerprint is taken from the apply
// response itself, so it holds the server's defaulting and normalisation
// (quantities, int-or-string ports) and nothing a later writer did.
//
// An object shows no drift when, read back later (one List per kind and
// namespace), all of these hold:
//   - it exists and carries LabelApplication with the application's name;
//   - its AnnotationContentHash equals the inventory's rendered hash;
//   - its fingerprint equals the inventory's.
//
// Any write to a field Drover applied changes the fingerprint: a changed
// value changes the projected values, and the API server moves ownership
// of a field that another manager updates (kubectl scale, kubectl edit, a
// controller) out of Drover's entry, which changes the field set even when
// the value was later set back. Writes to fields Drover does not own
// (status, a controller's annotations, defaulted fields) change neither,
// so they are not drift. Another manager applying the same value to a
// field Drover owns shares the field without taking it: not drift either.
//
// Sync skips an object (sends nothing) only when its rendered hash equals
// the inventory's and it shows no drift.

// driftReason says why the live object differs from what the inventory
// entry recorded, or "" when it does not. live is nil when the object is
// missing or labelled for another application.
func driftReason(e *entry, live *unstructured.Unstructured) string {
	switch {
	case live == nil:
		return "the object is missing"
	case e.Hash == "" || e.Live == "":
		return "the object was not applied yet"
	case live.GetAnnotations()[AnnotationContentHash] != e.Hash:
		return "annotation " + AnnotationContentHash + " was changed"
	case fingerprint(live) != e.Live:
		return "fields applied by Drover were changed, or taken over by another field manager"
	}
	return ""
}

// fingerprint hashes what FieldManager owns of obj (see the comment at the
// top of this file), or returns "" when it owns nothing.
func fingerprint(obj *unstructured.Unstructured) string {
	set := ownedFields(obj)
	if set == nil {
		return ""
	}
	h := sha256.New()
	project(h, "", obj.Object, set)
	return hex.EncodeToString(h.Sum(nil))
}

// ownedFields returns the parsed fieldsV1 of FieldManager's Apply entry on
// the object's main resource, or nil.
func ownedFields(obj *unstructured.Unstructured) map[string]any {
	for _, mf := range obj.GetManagedFields() {
		if mf.Manager != FieldManager || mf.Operation != metav1.ManagedFieldsOperationApply || mf.Subresource != "" {
			continue
		}
		if mf.FieldsV1 == nil {
			return nil
		}
		var set map[string]any
		if err := json.Unmarshal(mf.FieldsV1.Raw, &set); err != nil {
			return nil
		}
		return set
	}
	return nil
}

// sameOwnedFields reports whether FieldManager owns the same fields of a
// and b.
func sameOwnedFields(a, b *unstructured.Unstructured) bool {
	ja, errA := json.Marshal(ownedFields(a))
	jb, errB := json.Marshal(ownedFields(b))
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// project writes to h, in a fixed order, every leaf path of the field set
// with the value found at that path in value (or that it is absent).
// Field sets use the structured-merge-diff path elements: "f:name" a map
// field, "k:{json}" a list item by its keys, "v:json" a set member, "i:N"
// a list index; "." marks the element itself.
func project(h hash.Hash, path string, value any, set map[string]any) {
	keys := make([]string, 0, len(set))
	for k := range set {
		if k != "." {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := path + "/" + strconv.Quote(k)
		child, found := step(value, k)
		sub, _ := set[k].(map[string]any)
		if found && !isLeaf(sub) {
			project(h, p, child, sub)
			continue
		}
		fmt.Fprintf(h, "%s=", p)
		if !found {
			h.Write([]byte("<absent>\n"))
			continue
		}
		b, err := json.Marshal(child)
		if err != nil {
			// Unstructured content always encodes; if it did not, the
			// fingerprint must still differ from a good one.
			b = []byte("<unencodable>")
		}
		h.Write(b)
		h.Write([]byte("\n"))
	}
}

// isLeaf reports whether a field set node owns its element as a whole.
func isLeaf(node map[string]any) bool {
	for k := range node {
		if k != "." {
			return false
		}
	}
	return true
}

// step follows one path element from value.
func step(value any, elem string) (any, bool) {
	prefix, arg, ok := strings.Cut(elem, ":")
	if !ok {
		return nil, false
	}
	switch prefix {
	case "f":
		m, ok := value.(map[string]any)
		if !ok {
			return nil, false
		}
		v, ok := m[arg]
		return v, ok
	case "k":
		list, ok := value.([]any)
		if !ok {
			return nil, false
		}
		var keys map[string]any
		if err := json.Unmarshal([]byte(arg), &keys); err != nil {
			return nil, false
		}
		for _, item := range list {
			if m, ok := item.(map[string]any); ok && matchesKeys(m, keys) {
				return item, true
			}
		}
	case "v":
		list, ok := value.([]any)
		if !ok {
			return nil, false
		}
		for _, item := range list {
			if jsonEqual(item, json.RawMessage(arg)) {
				return item, true
			}
		}
	case "i":
		list, ok := value.([]any)
		i, err := strconv.Atoi(arg)
		if !ok || err != nil || i < 0 || i >= len(list) {
			return nil, false
		}
		return list[i], true
	}
	return nil, false
}

func matchesKeys(item, keys map[string]any) bool {
	for k, want := range keys {
		got, ok := item[k]
		if !ok || !jsonEqual(got, want) {
			return false
		}
	}
	return true
}

// jsonEqual compares two values as JSON, so that an int64 from a decoded
// object equals the float64 of a decoded field set key.
func jsonEqual(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil {
		return false
	}
	if raw, ok := b.(json.RawMessage); ok {
		// Re-encode so that insignificant formatting does not matter.
		var v any
		if json.Unmarshal(raw, &v) != nil {
			return false
		}
		jb, _ = json.Marshal(v)
	}
	return bytes.Equal(ja, jb)
}
