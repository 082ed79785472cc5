package spec

import "errors"

// ValidateRepoURL checks a repository URL as ValidateSpec checks
// spec.source.repoURL (network transports only, no credentials in it). The
// error never repeats the URL.
func ValidateRepoURL(raw string) error {
	if msg := checkRepoURL(raw); msg != "" {
		return errors.New(msg)
	}
	return nil
}
