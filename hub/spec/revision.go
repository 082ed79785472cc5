package spec

import (
	"errors"

	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/gitremote"
)

// ValidateRevision checks a release as users and agents name one: a full
// Git commit SHA, or VERSION@sha256:HEX for a Helm repository or OCI
// source.
func ValidateRevision(rev string) error {
	if artifact.IsRevision(rev) {
		return nil
	}
	if sha, err := gitremote.CheckCommit(rev); err == nil && sha == rev {
		return nil
	}
	return errors.New("not a full lower-case commit SHA or a VERSION@sha256:HEX revision")
}
