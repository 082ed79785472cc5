package droverv1

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestEveryEnumValueHasAName fails when a value is added to Health or
// SyncState without a short name, which would show as "Unknown" everywhere.
func TestEveryEnumValueHasAName(t *testing.T) {
	cases := []struct {
		desc    protoreflect.EnumDescriptor
		name    func(protoreflect.EnumNumber) string
		unnamed map[protoreflect.EnumNumber]bool
	}{
		{
			desc:    Health(0).Descriptor(),
			name:    func(n protoreflect.EnumNumber) string { return Health(n).Name() },
			unnamed: map[protoreflect.EnumNumber]bool{0: true, protoreflect.EnumNumber(Health_HEALTH_UNKNOWN): true},
		},
		{
			desc:    SyncState(0).Descriptor(),
			name:    func(n protoreflect.EnumNumber) string { return SyncState(n).Name() },
			unnamed: map[protoreflect.EnumNumber]bool{0: true},
		},
	}
	for _, c := range cases {
		values := c.desc.Values()
		seen := map[string]protoreflect.Name{}
		for i := range values.Len() {
			v := values.Get(i)
			got := c.name(v.Number())
			if c.unnamed[v.Number()] {
				if got != "Unknown" {
					t.Errorf("%s: Name() = %q, want Unknown", v.Name(), got)
				}
				continue
			}
			if got == "Unknown" || got == "" {
				t.Errorf("%s has no short name", v.Name())
			}
			if strings.ContainsAny(got, " _") {
				t.Errorf("%s: short name %q has a space or underscore", v.Name(), got)
			}
			if other, dup := seen[got]; dup {
				t.Errorf("%s and %s share the short name %q", other, v.Name(), got)
			}
			seen[got] = v.Name()
		}
		if got := c.name(99); got != "Unknown" {
			t.Errorf("%s(99).Name() = %q, want Unknown", c.desc.Name(), got)
		}
	}
}
