package spec

import (
	"errors"
	"strings"

	"github.com/drover-dev/drover/internal/artifact"
)

// ValidateRepoURL checks a repository URL as ValidateSpec checks
// spec.source.repoURL (network transports only, no credentials in it): a
// Git or Helm repository URL, or an OCI repository oci://HOST[:PORT]/PATH.
// It is what repository credentials are stored under. The error never
// repeats the URL.
func ValidateRepoURL(raw string) error {
	if strings.HasPrefix(strings.ToLower(raw), "oci://") {
		if _, err := artifact.ParseOCIURL(raw); err != nil {
			return errors.New("not oci://HOST[:PORT]/PATH with a lower-case repository path and no credentials, tag or digest")
		}
		return nil
	}
	if msg := checkRepoURL(raw); msg != "" {
		return errors.New(msg)
	}
	return nil
}
