package gitremote

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestCheckRef(t *testing.T) {
	for _, ref := range []string{"HEAD", "main", "release/1.x", "v1.2", "refs/heads/main", "refs/tags/v1.2", "refs/pull/7/head", strings.Repeat("a", MaxRefLength)} {
		if err := CheckRef(ref); err != nil {
			t.Errorf("CheckRef(%q): %v", ref, err)
		}
	}
	for _, ref := range []string{"", "-main", "main..x", "a b", "main.lock", "v1^{}", "refs/heads/", "a//b", "/main", "x~1", "a:b", "a\x00b", strings.Repeat("a", MaxRefLength+1)} {
		if err := CheckRef(ref); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckRef(%q) = %v, want ErrInvalid", ref, err)
		}
	}
}

func TestFullRefNames(t *testing.T) {
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"HEAD", []string{"HEAD"}},
		{"refs/heads/main", []string{"refs/heads/main"}},
		{"refs/tags/v1", []string{"refs/tags/v1"}},
		{"main", []string{"refs/heads/main", "refs/tags/main"}},
		{"release/1.x", []string{"refs/heads/release/1.x", "refs/tags/release/1.x"}},
	} {
		if got := FullRefNames(tc.ref); !slices.Equal(got, tc.want) {
			t.Errorf("FullRefNames(%q) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}

func TestAssignmentRef(t *testing.T) {
	for in, want := range map[string]string{
		"":                       "HEAD",
		"HEAD":                   "HEAD",
		"main":                   "main",
		"refs/tags/v1.2":         "refs/tags/v1.2",
		strings.Repeat("ab", 20): "",
		strings.Repeat("AB", 20): "",
	} {
		if got := AssignmentRef(in); got != want {
			t.Errorf("AssignmentRef(%q) = %q, want %q", in, got, want)
		}
	}
}
