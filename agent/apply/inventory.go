package apply

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"

	"github.com/fluxcd/pkg/ssa"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-dev/drover/internal/retry"
)

// The inventory of an application is what Drover applied for it to this
// cluster, kept in the cluster itself (so a reinstalled agent, or another
// replica, prunes what the last one applied): a ConfigMap in
// Options.InventoryNamespace holding JSON, gzip-compressed when large.
const (
	inventoryPrefix = "drover-inventory-"
	// labelInventory marks inventory ConfigMaps with their application.
	// It is not LabelApplication: an inventory is not one of the
	// application's objects, and must never be pruned as one.
	labelInventory  = "drover.dev/inventory-of"
	inventoryKey    = "inventory.json"
	inventoryGzKey  = "inventory.json.gz"
	compressAtBytes = 128 << 10
	// maxInventoryBytes keeps the ConfigMap under the API server's 1 MiB
	// object limit, with room for its metadata.
	maxInventoryBytes = 1000 << 10
)

// inventory is the stored record of one application's last apply.
type inventory struct {
	Application string  `json:"application"`
	Commit      string  `json:"commit,omitempty"`
	Entries     []entry `json:"entries"`
	// Hooks records the Helm hooks of the last release that had some.
	Hooks *hookRecord `json:"hooks,omitempty"`

	resourceVersion string // of the ConfigMap; "" when there is none yet
	stored          []byte // the JSON as last read or written
}

// entry is one object of the inventory.
type entry struct {
	Group     string `json:"group,omitempty"`
	Version   string `json:"version"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Hash is the contentHash of the object as last applied; "" while it
	// is listed (so it can be pruned) but not applied yet.
	Hash string `json:"hash,omitempty"`
	// Live is the object's fingerprint right after that apply.
	Live string `json:"live,omitempty"`
	// Stale marks an object that left the render but is still in the
	// cluster: prune is off, or deleting it failed.
	Stale bool `json:"stale,omitempty"`
}

func (e *entry) ref() ObjectRef {
	return ObjectRef{Group: e.Group, Version: e.Version, Kind: e.Kind, Namespace: e.Namespace, Name: e.Name}
}

func newEntry(r ObjectRef) entry {
	return entry{Group: r.Group, Version: r.Version, Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
}

// byKey indexes the entries.
func (inv *inventory) byKey() map[string]*entry {
	m := make(map[string]*entry, len(inv.Entries))
	for i := range inv.Entries {
		m[inv.Entries[i].ref().key()] = &inv.Entries[i]
	}
	return m
}

// inventoryName is the ConfigMap's name: the application's name when it
// makes a valid name, else a hash of it (label values allow upper case and
// underscores, object names do not).
func inventoryName(app string) string {
	name := inventoryPrefix + app
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(app))
	return inventoryPrefix + hex.EncodeToString(sum[:10])
}

// readInventory returns the application's inventory, empty when it has
// none.
func (s *session) readInventory(ctx context.Context) (*inventory, error) {
	inv := &inventory{Application: s.app}
	var cm corev1.ConfigMap
	key := client.ObjectKey{Namespace: s.a.opts.InventoryNamespace, Name: inventoryName(s.app)}
	err := s.a.client.Get(ctx, key, &cm)
	if apierrors.IsNotFound(err) {
		return inv, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read inventory %s/%s: %w", key.Namespace, key.Name, err)
	}
	raw, err := decodeInventory(&cm)
	if err != nil {
		return nil, fmt.Errorf("inventory %s/%s: %w", key.Namespace, key.Name, err)
	}
	if err := json.Unmarshal(raw, inv); err != nil {
		return nil, fmt.Errorf("inventory %s/%s: %w", key.Namespace, key.Name, err)
	}
	if inv.Application != s.app {
		return nil, fmt.Errorf("inventory %s/%s belongs to application %q, not %q", key.Namespace, key.Name, inv.Application, s.app)
	}
	inv.resourceVersion = cm.ResourceVersion
	inv.stored = raw
	return inv, nil
}

func decodeInventory(cm *corev1.ConfigMap) ([]byte, error) {
	if gz, ok := cm.BinaryData[inventoryGzKey]; ok {
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", inventoryGzKey, err)
		}
		raw, err := io.ReadAll(io.LimitReader(r, 64<<20))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", inventoryGzKey, err)
		}
		return raw, nil
	}
	if s, ok := cm.Data[inventoryKey]; ok {
		return []byte(s), nil
	}
	return nil, fmt.Errorf("neither %s nor %s is set", inventoryKey, inventoryGzKey)
}

// writeInventory stores inv unless it is what is stored already. A
// concurrent change by another writer fails as transient (retry.Transient) rather
// than being overwritten.
func (s *session) writeInventory(ctx context.Context, inv *inventory) error {
	sort.SliceStable(inv.Entries, func(i, j int) bool {
		return ssa.SortableMetas{inv.Entries[i].ref().objMetadata(), inv.Entries[j].ref().objMetadata()}.Less(0, 1)
	})
	raw, err := json.Marshal(inv)
	if err != nil {
		return fmt.Errorf("encode inventory: %w", err)
	}
	if inv.stored != nil && bytes.Equal(raw, inv.stored) {
		return nil
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       s.a.opts.InventoryNamespace,
			Name:            inventoryName(s.app),
			Labels:          map[string]string{labelInventory: s.app},
			ResourceVersion: inv.resourceVersion,
		},
	}
	if err := encodeInventory(cm, raw); err != nil {
		return err
	}
	if inv.resourceVersion == "" {
		err = s.a.client.Create(ctx, cm)
		if apierrors.IsNotFound(err) {
			if err = s.ensureInventoryNamespace(ctx); err == nil {
				err = s.a.client.Create(ctx, cm)
			}
		}
	} else {
		err = s.a.client.Update(ctx, cm)
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		err = retry.Transient(fmt.Errorf("another writer changed it: %w", err))
	}
	if err != nil {
		return fmt.Errorf("write inventory %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	inv.resourceVersion = cm.ResourceVersion
	inv.stored = raw
	return nil
}

func encodeInventory(cm *corev1.ConfigMap, raw []byte) error {
	if len(raw) < compressAtBytes {
		cm.Data = map[string]string{inventoryKey: string(raw)}
		return nil
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(raw); err != nil {
		return fmt.Errorf("compress inventory: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress inventory: %w", err)
	}
	if buf.Len() > maxInventoryBytes {
		return fmt.Errorf("inventory of %d bytes (%d compressed) exceeds %d bytes: split the application", len(raw), buf.Len(), maxInventoryBytes)
	}
	cm.BinaryData = map[string][]byte{inventoryGzKey: buf.Bytes()}
	return nil
}

func (s *session) ensureInventoryNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.a.opts.InventoryNamespace}}
	if err := s.a.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns.Name, err)
	}
	return nil
}

// deleteInventory removes the application's inventory.
func (s *session) deleteInventory(ctx context.Context) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.a.opts.InventoryNamespace, Name: inventoryName(s.app)}}
	if err := s.a.client.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete inventory %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}
