package artifact

import (
	"regexp"
	"slices"

	"github.com/Masterminds/semver/v3"
)

// tagPattern is an OCI tag (the distribution spec's grammar), with
// maxVersionLen (see revisionPattern for why apart).
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// CheckVersion validates a source's version field: empty, an exact
// version, an OCI tag, or a semantic version range as Helm reads it
// (Masterminds/semver: "1.2.x", "~1.2", "^1", ">=1.0.0 <2.0.0"). It is the
// one definition the hub's spec validation and the resolver share. Errors
// wrap ErrInvalid.
func CheckVersion(v string) error {
	if v == "" || IsTag(v) {
		return nil
	}
	if _, err := semver.NewConstraint(v); err != nil {
		return invalidf("version %q is neither a version, an OCI tag nor a semantic version range: %v", v, err)
	}
	return nil
}

// chartNamePattern is a chart name as Helm accepts it (chartutil's
// chartName): letters, digits, ".", "_" and "-", at most maxChartNameLen.
var chartNamePattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// maxChartNameLen is the longest chart name Helm accepts.
const maxChartNameLen = 250

// CheckChartName validates the name of a chart in a Helm repository.
// Errors wrap ErrInvalid.
func CheckChartName(name string) error {
	if len(name) > maxChartNameLen || !chartNamePattern.MatchString(name) || name == "." || name == ".." {
		return invalidf("chart %q is not a chart name (letters, digits, \".\", \"_\" and \"-\", at most 250)", name)
	}
	return nil
}

// IsTag reports whether s is a valid OCI tag.
func IsTag(s string) bool { return len(s) <= maxVersionLen && tagPattern.MatchString(s) }

// pick returns the highest of versions that satisfies constraint, where
// versions that do not parse as semver never match. An empty constraint
// takes the highest version without a pre-release. A constraint equal to
// one of versions picks it, even if it is not semver. highest is the
// highest semver version without a pre-release (or with one, if all have
// one), for error messages.
func pick(versions []string, constraint string) (chosen, highest string, err error) {
	if constraint != "" && slices.Contains(versions, constraint) {
		return constraint, "", nil
	}
	expr := constraint
	if expr == "" {
		expr = "*"
	}
	c, err := semver.NewConstraint(expr)
	if err != nil {
		return "", "", invalidf("version %q is not a semantic version range: %v", constraint, err)
	}
	var best, top *semver.Version
	var bestRaw, topRaw string
	for _, raw := range versions {
		v, err := semver.NewVersion(raw)
		if err != nil {
			continue
		}
		if top == nil || shownAbove(v, top) {
			top, topRaw = v, raw
		}
		if c.Check(v) && (best == nil || v.GreaterThan(best)) {
			best, bestRaw = v, raw
		}
	}
	return bestRaw, topRaw, nil
}

// shownAbove reports whether v rather than top is the highest version an
// error names: a release beats a pre-release, then the greater wins.
func shownAbove(v, top *semver.Version) bool {
	vPre, topPre := v.Prerelease() != "", top.Prerelease() != ""
	if vPre != topPre {
		return !vPre
	}
	return v.GreaterThan(top)
}
