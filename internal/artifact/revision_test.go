package artifact

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRevision(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in      string
		version string
		ok      bool
	}{
		{"1.2.3@sha256:" + hex, "1.2.3", true},
		{"1.2.3+build.1@sha256:" + hex, "1.2.3+build.1", true},
		{"latest@sha256:" + hex, "latest", true},
		{"1.2.3@sha256:" + strings.ToUpper(hex), "", false},
		{"1.2.3@sha256:" + hex[:63], "", false},
		{"1.2.3@sha256:" + hex + "0", "", false},
		{"1.2.3@sha512:" + hex, "", false},
		{"@sha256:" + hex, "", false},
		{"1.2.3", "", false},
		{"1 2@sha256:" + hex, "", false},
		{"a@b@sha256:" + hex, "", false},
		{strings.Repeat("a", 40), "", false},
		{strings.Repeat("v", 128) + "@sha256:" + hex, strings.Repeat("v", 128), true},
		{strings.Repeat("v", 129) + "@sha256:" + hex, "", false},
	} {
		r, err := ParseRevision(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("ParseRevision(%q): err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseRevision(%q): %v is not ErrInvalid", tc.in, err)
			}
			continue
		}
		if r.Version != tc.version || r.Digest != "sha256:"+hex || r.String() != tc.in {
			t.Errorf("ParseRevision(%q) = %+v (String %q)", tc.in, r, r.String())
		}
	}
}

func TestShortCommit(t *testing.T) {
	hex := "abcdef0123456789" + strings.Repeat("0", 48)
	for in, want := range map[string]string{
		"1.1.0@sha256:" + hex:                      "1.1.0@sha256:abcdef012345",
		"0123456789abcdef0123456789abcdef01234567": "0123456",
		"short": "short",
	} {
		if got := ShortCommit(in, 7); got != want {
			t.Errorf("ShortCommit(%q, 7) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckVersion(t *testing.T) {
	for _, v := range []string{"", "1.2.3", "1.2.3+build", "latest", "v1.2", "1.2.x", "~1.2", "^1", ">=1.0.0 <2.0.0", "1.0.0 - 2.0.0", ">=1.0.0 || <0.5"} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%q): %v", v, err)
		}
	}
	for _, v := range []string{">=foo", "1.2.3 with spaces", "-leading", "a/b", ">>1"} {
		if err := CheckVersion(v); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckVersion(%q) = %v, want ErrInvalid", v, err)
		}
	}
}

// TestNameLengths: tags and versions are at most 128 characters (the
// distribution spec's), chart names at most 250 (Helm's).
func TestNameLengths(t *testing.T) {
	if tag := strings.Repeat("t", 128); !IsTag(tag) || CheckVersion(tag) != nil {
		t.Errorf("a tag of 128 characters is refused: IsTag %v, CheckVersion %v", IsTag(tag), CheckVersion(tag))
	}
	if tag := strings.Repeat("t", 129); IsTag(tag) || !errors.Is(CheckVersion(tag), ErrInvalid) {
		t.Errorf("a tag of 129 characters is taken: IsTag %v, CheckVersion %v", IsTag(tag), CheckVersion(tag))
	}
	if err := CheckChartName(strings.Repeat("c", 250)); err != nil {
		t.Errorf("a chart name of 250 characters: %v", err)
	}
	if err := CheckChartName(strings.Repeat("c", 251)); !errors.Is(err, ErrInvalid) {
		t.Errorf("a chart name of 251 characters: %v, want ErrInvalid", err)
	}
}
