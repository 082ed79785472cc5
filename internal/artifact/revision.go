// Package artifact is the one place Drover speaks to Helm repositories and
// OCI registries, for the hub (which resolves a chart version or a tag to a
// pinned revision), the agent (which fetches exactly that revision and
// verifies it) and droverctl. It defines the revision format both sides
// exchange, resolves version ranges, fetches and verifies chart archives and
// OCI artifacts over TLS the way the repository's credentials say, and
// unpacks archives safely.
//
// A revision is "VERSION@sha256:HEX", the format Flux uses: for a Helm
// repository the chart version and the SHA-256 of the chart archive, for an
// OCI registry the tag and the manifest digest. Whatever reaches an agent is
// checked against that digest before anything reads it.
//
// Errors never contain credentials: URLs are named through
// gitremote.RedactURL and passwords never enter error text. They are
// classified with errors.Is (ErrInvalid, ErrAuth, ErrNotFound, ErrTooLarge)
// and errors.As (*DigestMismatchError, *NoVersionError), and marked with
// retry.Transient or retry.Permanent.
package artifact

import (
	"fmt"
	"regexp"
	"strings"
)

// Revision is a pinned Helm chart version or OCI tag and the SHA-256 digest
// of the chart archive or OCI manifest.
type Revision struct {
	// Version is the chart version (Helm repository) or the tag (OCI).
	Version string
	// Digest is "sha256:" and 64 lower-case hex digits.
	Digest string
}

// revisionPattern is the one definition of a revision's text, with
// maxVersionLen. The version part is a chart version (semver, which may
// carry "+build") or an OCI tag.
//
// Lengths are checked apart from the patterns: a counted repetition such
// as {0,127} compiles to a copy of its atom per count, and the patterns,
// compiled when the package loads, held a third of a MiB of every agent's
// heap.
var revisionPattern = regexp.MustCompile(`^([A-Za-z0-9_][A-Za-z0-9._+-]*)@(sha256:[0-9a-f]+)$`)

// maxVersionLen is the longest version or OCI tag (the distribution spec's).
const maxVersionLen = 128

// sha256Len is the length of "sha256:" and 64 hex digits.
const sha256Len = len("sha256:") + 64

// ParseRevision parses "VERSION@sha256:HEX" strictly: lower-case hex of
// exactly 64 digits, a version of letters, digits and "._+-". Errors wrap
// ErrInvalid.
func ParseRevision(s string) (Revision, error) {
	m := revisionPattern.FindStringSubmatch(s)
	if m == nil || len(m[1]) > maxVersionLen || len(m[2]) != sha256Len {
		return Revision{}, invalidf("revision %q is not VERSION@sha256:HEX (64 lower-case hex digits)", s)
	}
	return Revision{Version: m[1], Digest: m[2]}, nil
}

// IsRevision reports whether s is a revision as ParseRevision accepts it.
func IsRevision(s string) bool {
	_, err := ParseRevision(s)
	return err == nil
}

// String formats r as "VERSION@sha256:HEX".
func (r Revision) String() string { return r.Version + "@" + r.Digest }

// Hex returns the digest's hex digits, without "sha256:".
func (r Revision) Hex() string { return strings.TrimPrefix(r.Digest, "sha256:") }

// ShortCommit shortens a release's commit string for display: a revision
// to its version and the first 12 hex digits of its digest
// ("1.1.0@sha256:abcdef012345"), anything else (a Git SHA) to its first
// gitLen characters, as the caller's view shows SHAs.
func ShortCommit(s string, gitLen int) string {
	if r, err := ParseRevision(s); err == nil {
		return r.Version + "@sha256:" + r.Hex()[:12]
	}
	if len(s) > gitLen {
		return s[:gitLen]
	}
	return s
}

// digestPattern is a SHA-256 digest as revisions carry it, with sha256Len.
var digestPattern = regexp.MustCompile(`^sha256:[0-9a-f]+$`)

func checkDigest(d string) error {
	if len(d) != sha256Len || !digestPattern.MatchString(d) {
		return invalidf("digest %q is not sha256: and 64 lower-case hex digits", d)
	}
	return nil
}

// newRevision checks version and digest and joins them.
func newRevision(version, digest string) (Revision, error) {
	r := Revision{Version: version, Digest: digest}
	if _, err := ParseRevision(r.String()); err != nil {
		return Revision{}, fmt.Errorf("version %q with digest %q: %w", version, digest, err)
	}
	return r, nil
}
