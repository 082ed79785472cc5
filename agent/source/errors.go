package source

import (
	"context"
	"errors"
	"fmt"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Causes that say retrying will not help until the assignment changes.
// errors.Is finds them in an *Error.
var (
	// ErrInvalid: an input (repository URL, credentials, commit) is
	// malformed; the message names the field. It is gitremote's, so the
	// URL and credential checks done there are classified too.
	ErrInvalid = gitremote.ErrInvalid
	// ErrAuth: the server rejected the credentials, or wants some and got
	// none (HTTP 401/403).
	ErrAuth = gitremote.ErrAuth
	// ErrHostKey: the SSH server's host key is not in the repository's
	// known hosts, or does not match them.
	ErrHostKey = gitremote.ErrHostKey
	// ErrRepoNotFound: the repository does not exist (or the credentials
	// may not see it; servers answer both with 404).
	ErrRepoNotFound = gitremote.ErrRepoNotFound
	// ErrUnknownCommit: the repository has no such commit.
	ErrUnknownCommit = errors.New("unknown commit")
)

// Error is why a Checkout failed. Its text names the repository by its
// redacted URL and never contains a credential.
type Error struct {
	// Op is the step that failed: "checkout", "fetch" or "materialise".
	Op string
	// URL is the repository URL, redacted (gitremote.RedactURL).
	URL string
	// Err is the cause, with credentials scrubbed from its text, marked
	// (retry.Transient or retry.Permanent) by whether the same call can
	// succeed before its input changes: not for bad credentials or an
	// unknown commit, yes for failures that may pass (network, server
	// errors, a full disk). errors.Is and errors.As see through it to the
	// original error and to the sentinel above that classifies it.
	Err error
}

func (e *Error) Error() string { return e.Op + " " + e.URL + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// cause is an error whose text has been scrubbed of secrets, unwrapping to
// the sentinel that classifies it (if any) and the original error.
type cause struct {
	kind  error
	err   error
	clean string
}

func (c *cause) Error() string {
	if c.kind != nil && (c.err == nil || !errors.Is(c.err, c.kind)) {
		if c.clean == "" {
			return c.kind.Error()
		}
		return c.kind.Error() + ": " + c.clean
	}
	return c.clean
}

func (c *cause) Unwrap() []error {
	var out []error
	if c.kind != nil {
		out = append(out, c.kind)
	}
	if c.err != nil {
		out = append(out, c.err)
	}
	return out
}

// newError classifies err for op on r, with its text scrubbed of rawURL
// and secrets (gitremote.Scrub).
func newError(op string, r gitremote.Remote, rawURL string, err error, secrets []string) *Error {
	kind, retryable := classify(err)
	return &Error{
		Op:  op,
		URL: r.Redacted,
		Err: retry.Mark(&cause{kind: kind, err: err, clean: gitremote.Scrub(err.Error(), rawURL, r.Redacted, secrets)}, retryable),
	}
}

// classify returns the sentinel that says why err is permanent, if one
// does, and whether retrying may help. Cancellation is retryable: it says
// nothing about the input.
func classify(err error) (kind error, retryable bool) {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil, true
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrUnknownCommit):
		return nil, false
	}
	if kind := gitremote.Classify(err); kind != nil {
		return kind, false
	}
	return nil, true
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}
