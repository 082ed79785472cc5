package spec

import (
	"errors"
	"regexp"

	"github.com/drover-dev/drover/internal/gitremote"
)

// artifactRevision is a Helm repository's or OCI registry's pinned
// revision: VERSION@sha256:HEX, the version or tag an OCI tag may be.
var artifactRevision = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}@sha256:[0-9a-f]{64}$`)

// ValidateRevision checks a release as users name one: a full Git commit
// SHA, or VERSION@sha256:HEX for a Helm repository or OCI source.
func ValidateRevision(rev string) error {
	if artifactRevision.MatchString(rev) {
		return nil
	}
	if sha, err := gitremote.CheckCommit(rev); err == nil && sha == rev {
		return nil
	}
	return errors.New("not a full lower-case commit SHA or a VERSION@sha256:HEX revision")
}
