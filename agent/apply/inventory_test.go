package apply

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/drover-dev/drover/internal/retry"
)

func TestInventoryName(t *testing.T) {
	tests := []struct {
		app      string
		want     string // "" when it must be hashed
		distinct string // another application whose name must differ
	}{
		{app: "web", want: "drover-inventory-web"},
		{app: "web.v2", want: "drover-inventory-web.v2"},
		{app: "Web_App", distinct: "web_app"},
		{app: strings.Repeat("a", 63), want: "drover-inventory-" + strings.Repeat("a", 63)},
	}
	for _, tt := range tests {
		t.Run(tt.app, func(t *testing.T) {
			got := inventoryName(tt.app)
			if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Fatalf("inventoryName(%q) = %q, not a valid name: %v", tt.app, got, errs)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("inventoryName(%q) = %q, want %q", tt.app, got, tt.want)
			}
			if tt.distinct != "" && got == inventoryName(tt.distinct) {
				t.Errorf("inventoryName(%q) = inventoryName(%q) = %q", tt.app, tt.distinct, got)
			}
		})
	}
}

func TestInventoryEncoding(t *testing.T) {
	tests := []struct {
		name       string
		entries    int
		compressed bool
	}{
		{"small stays plain", 10, false},
		{"large is compressed", 3000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := &inventory{Application: "app", Commit: "abc"}
			for i := range tt.entries {
				var h [32]byte
				_, _ = rand.Read(h[:])
				inv.Entries = append(inv.Entries, entry{
					Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "ns",
					Name: fmt.Sprintf("web-%d", i), Hash: hex.EncodeToString(h[:]), Live: hex.EncodeToString(h[:]),
				})
			}
			raw, err := json.Marshal(inv)
			if err != nil {
				t.Fatal(err)
			}
			cm := &corev1.ConfigMap{}
			if err := encodeInventory(cm, raw); err != nil {
				t.Fatal(err)
			}
			if _, gz := cm.BinaryData[inventoryGzKey]; gz != tt.compressed {
				t.Errorf("compressed = %v, want %v (%d bytes of JSON)", gz, tt.compressed, len(raw))
			}
			back, err := decodeInventory(cm)
			if err != nil {
				t.Fatal(err)
			}
			var got inventory
			if err := json.Unmarshal(back, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Entries, inv.Entries) || got.Commit != inv.Commit {
				t.Error("the inventory read back differs from the one written")
			}
		})
	}
}

func TestClassify(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "https://127.0.0.1:1/api", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"wrapped connection refused", fmt.Errorf("read inventory: %w", refused), true},
		{"service unavailable", apierrors.NewServiceUnavailable("overloaded"), true},
		{"too many requests", apierrors.NewTooManyRequests("slow down", 1), true},
		{"invalid", apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "web", nil), false},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "web", errors.New("no")), false},
		{"no kind match", &meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: "example.com", Kind: "Widget"}}, false},
		{"object error over an unreachable server", &ObjectError{Err: refused}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retry.IsTransient(classify(t.Context(), tt.err)); got != tt.want {
				t.Errorf("retry.IsTransient(classify(%v)) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
