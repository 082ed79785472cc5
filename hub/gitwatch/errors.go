package gitwatch

import (
	"errors"
	"fmt"
	"strings"

	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
)

// Errors that say retrying will not help until someone changes something.
// An error from the remote itself (network, server 5xx, timeouts) is marked
// transient instead; retry.IsTransient tells them apart.
var (
	// ErrAuth: the server rejected the credentials, or wants some and got
	// none (HTTP 401/403). An SSH server's refusal is not classified: the
	// SSH library reports it as plain text, so it stays retryable.
	ErrAuth = gitremote.ErrAuth
	// ErrHostKey: the SSH server's host key is not in the repository's
	// known hosts, or does not match them.
	ErrHostKey = gitremote.ErrHostKey
	// ErrNotFound: the repository does not exist (or the credentials may
	// not see it; servers answer both with 404).
	ErrNotFound = gitremote.ErrRepoNotFound
	// ErrInvalid: an input (repository URL, credentials, ref, path) is
	// malformed; the message names the field. It is gitremote's, so the
	// URL and credential checks done there are classified too.
	ErrInvalid = gitremote.ErrInvalid
	// ErrRefNotFound: the remote has no such branch or tag.
	ErrRefNotFound = errors.New("ref not found")
	// ErrAmbiguousRef: a short name is both a branch and a tag.
	ErrAmbiguousRef = errors.New("ref is ambiguous")
	// ErrCommitNotFound: a commit given to PathsChanged is not on the
	// server.
	ErrCommitNotFound = errors.New("commit not found")
)

// RefError is why one ref of a Resolve call did not resolve while the remote
// itself answered. It wraps ErrRefNotFound, ErrAmbiguousRef or ErrInvalid.
type RefError struct {
	// Repo is the repository URL, redacted.
	Repo string
	Ref  string
	Err  error
}

func (e *RefError) Error() string {
	return fmt.Sprintf("resolve %s: ref %q: %v", e.Repo, e.Ref, e.Err)
}

func (e *RefError) Unwrap() error { return e.Err }

// RefErrors is the error of a Resolve call whose remote answered but some of
// whose refs did not resolve; the map Resolve returns holds the others.
// errors.As finds it, and through it each *RefError.
type RefErrors []*RefError

func (e RefErrors) Error() string {
	msgs := make([]string, len(e))
	for i, re := range e {
		msgs[i] = re.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e RefErrors) Unwrap() []error {
	errs := make([]error, len(e))
	for i, re := range e {
		errs[i] = re
	}
	return errs
}

// For returns the error of ref, or nil.
func (e RefErrors) For(ref string) *RefError {
	for _, re := range e {
		if re.Ref == ref {
			return re
		}
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// remoteError is an error from go-git about one repository: classified, and
// with every credential scrubbed from its text (gitremote.Scrub).
type remoteError struct {
	op    string
	repo  string
	kind  error // ErrAuth, ErrHostKey, ErrNotFound, or nil (retryable)
	err   error
	clean string // err's text with the secrets replaced
}

// Error is go-git's text, which already says what kind is ("authentication
// required", "repository not found"), scrubbed.
func (e *remoteError) Error() string {
	return fmt.Sprintf("%s %s: %s", e.op, e.repo, e.clean)
}

func (e *remoteError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// wrapRemote classifies err and scrubs secrets (the raw URL, passwords,
// keys) from its text: marked permanent when gitremote names the kind of
// refusal, transient otherwise.
func wrapRemote(op string, r gitremote.Remote, rawURL string, err error, secrets []string) error {
	if err == nil {
		return nil
	}
	kind := gitremote.Classify(err)
	clean := gitremote.Scrub(err.Error(), rawURL, r.Redacted, secrets)
	if kind == gitremote.ErrObjectFormat {
		// go-git's own text is about a malformed line; say what it means.
		clean = kind.Error()
	}
	return retry.Mark(&remoteError{op: op, repo: r.Redacted, kind: kind, err: err, clean: clean}, kind == nil)
}
