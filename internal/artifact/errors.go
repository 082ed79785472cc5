package artifact

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Causes that say retrying will not help until someone changes the source,
// its credentials or the server. errors.Is finds them.
var (
	// ErrInvalid: an input (URL, chart name, version, revision,
	// credentials) is malformed or refused; the message names it. It is
	// gitremote's, so the hub and agent classify it as they do for Git.
	ErrInvalid = gitremote.ErrInvalid
	// ErrAuth: the server rejected the credentials, or wants some and got
	// none (HTTP 401/403).
	ErrAuth = gitremote.ErrAuth
	// ErrNotFound: the index, chart, version, tag or blob is not there.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge: an index, archive or manifest exceeds its size limit, or
	// an archive unpacks to more than the extraction limits allow.
	ErrTooLarge = errors.New("too large")
	// ErrMediaType: an OCI artifact is neither a Helm chart nor a Flux
	// artifact.
	ErrMediaType = errors.New("unsupported media type")
)

// DigestMismatchError says content fetched for a pinned revision is not
// what the hub pinned: the repository's content changed since it was
// resolved (or someone tampered with it). It is marked transient by the
// functions returning it, so a fetch backs off and retries like any other
// failed fetch; a repository that stays tampered keeps failing.
type DigestMismatchError struct {
	// What names the content: "chart web-1.1.0.tgz", "manifest", "layer".
	What string
	// URL is where it came from, redacted.
	URL string
	// Got is the SHA-256 of what arrived; Want the pinned one.
	Got, Want string
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("%s from %s: SHA-256 %s does not match the pinned %s; the repository's content changed since the hub resolved it", e.What, e.URL, e.Got, e.Want)
}

// NoVersionError says no version of a chart (or no tag of an OCI
// repository) satisfies a version range.
type NoVersionError struct {
	// Name is the chart's name, or the OCI repository (redacted).
	Name string
	// URL is the repository, redacted.
	URL        string
	Constraint string
	// Highest is the highest version there is, or "" if there is none.
	Highest string
}

func (e *NoVersionError) Error() string {
	what := "version of chart " + e.Name + " in " + e.URL
	if e.Name == e.URL {
		what = "tag of " + e.URL
	}
	msg := fmt.Sprintf("no %s satisfies %s", what, e.Constraint)
	if e.Highest != "" {
		return msg + "; highest is " + e.Highest
	}
	return msg + "; there is no version at all"
}

func (e *NoVersionError) Unwrap() error { return ErrNotFound }

func invalidf(format string, args ...any) error {
	return retry.Permanent(fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...))
}

// statusError classifies an HTTP answer that is not 200.
func statusError(what, redacted string, code int) error {
	err := fmt.Errorf("%s from %s: HTTP %d %s", what, redacted, code, http.StatusText(code))
	switch {
	case code == http.StatusUnauthorized, code == http.StatusForbidden:
		return retry.Permanent(fmt.Errorf("%w: %w", ErrAuth, err))
	case code == http.StatusNotFound:
		return retry.Permanent(fmt.Errorf("%w: %w", ErrNotFound, err))
	case code == http.StatusTooManyRequests, code >= 500:
		return retry.Transient(err)
	}
	return retry.Permanent(err)
}
