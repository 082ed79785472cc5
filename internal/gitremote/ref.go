package gitremote

import (
	"fmt"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
)

// MaxRefLength bounds a ref name, as an application's source names it and
// as an assignment carries it.
const MaxRefLength = 255

// RefError says why a ref name is refused. It wraps ErrInvalid.
type RefError struct {
	Ref    string
	Reason string
}

func (e *RefError) Error() string { return fmt.Sprintf("ref %q: %s", e.Ref, e.Reason) }
func (e *RefError) Unwrap() error { return ErrInvalid }

// CheckRef returns a *RefError unless ref names a ref per git
// check-ref-format: "HEAD" (the remote's default branch), a full ref name
// ("refs/heads/main", "refs/tags/v1.2"), or a branch or tag name ("main",
// "release/1.x", "v1.2"). A commit SHA is a valid branch name to Git;
// callers that take SHAs too check for one first. The hub checks an
// application's ref with it and every agent the ref it is sent, so neither
// accepts a ref the other would not.
func CheckRef(ref string) error {
	reason := ""
	switch {
	case ref == "":
		reason = "must not be empty"
	case ref == "HEAD":
		return nil
	case len(ref) > MaxRefLength:
		reason = fmt.Sprintf("longer than %d characters", MaxRefLength)
	case strings.HasPrefix(ref, "-"):
		reason = "must not start with '-'"
	case strings.Contains(ref, "^{}"), plumbing.ReferenceName(FullRefNames(ref)[0]).Validate() != nil:
		// "^{}" is how ls-remote lists a peeled tag; no ref is named so.
		reason = "not a valid Git branch, tag or ref name (see git check-ref-format)"
	default:
		return nil
	}
	return &RefError{Ref: ref, Reason: reason}
}

// FullRefNames returns the full names a valid ref (CheckRef) may stand for
// on a remote, in the order a fetch tries them: "HEAD" and full names stand
// for themselves; a short name is a branch (refs/heads/NAME) or a tag
// (refs/tags/NAME). The hub resolves a short name that is both as an error
// rather than guess, so a commit the hub pinned from a short name came from
// exactly one of the two.
func FullRefNames(ref string) []string {
	if ref == "HEAD" || strings.HasPrefix(ref, "refs/") {
		return []string{ref}
	}
	return []string{"refs/heads/" + ref, "refs/tags/" + ref}
}

// AssignmentRef returns the ref an agent is told the pinned commit was
// resolved from, given an application's source ref: "HEAD" for the default
// branch (""), nothing for a commit SHA (there is no ref to fetch), and
// the ref itself otherwise.
func AssignmentRef(sourceRef string) string {
	switch {
	case sourceRef == "":
		return "HEAD"
	case len(sourceRef) == CommitLength && isHex(sourceRef):
		return ""
	}
	return sourceRef
}
