package dashboard

import (
	"strings"
	"testing"
)

// A Helm or OCI release's revision is shown by version and short digest,
// and never linked as a forge commit, even for a repository on a forge's
// host.
func TestRevisionsShowShortAndUnlinked(t *testing.T) {
	rev := "1.1.0@sha256:abcdef012345" + strings.Repeat("0", 52)
	if got := shortSHA(rev); got != "1.1.0@sha256:abcdef012345" {
		t.Errorf("shortSHA(%q) = %q", rev, got)
	}
	sha := strings.Repeat("ab", 20)
	if got := shortSHA(sha); got != sha[:10] {
		t.Errorf("shortSHA(%q) = %q, want %q", sha, got, sha[:10])
	}
	if got := forgeCommitURL("https://github.com/org/charts", rev); got != "" {
		t.Errorf("forgeCommitURL of a revision = %q, want none", got)
	}
	if got := forgeCommitURL("https://github.com/org/app.git", sha); got != "https://github.com/org/app/commit/"+sha {
		t.Errorf("forgeCommitURL of a commit = %q", got)
	}
}
