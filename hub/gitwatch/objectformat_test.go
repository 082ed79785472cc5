package gitwatch

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/internal/gitremote"
	"github.com/drover-dev/drover/internal/retry"
	"github.com/drover-dev/drover/internal/testlog"
)

// A repository in Git's SHA-256 object format is refused when the hub
// resolves it, with an error that says so and is not retried, so no release
// ever sends agents a commit they cannot fetch (every agent accepts exactly
// what gitremote.CheckCommit accepts).
func TestResolveRefusesSHA256Repositories(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepoSHA256(t, "org/sha256")
	head := repo.Commit(t, "first", map[string]string{"app/cm.yaml": "kind: ConfigMap\n"})
	if len(head) != 64 {
		t.Fatalf("the test bed made commit %q in a SHA-256 repository, want 64 characters", head)
	}
	if _, err := gitremote.CheckCommit(head); err == nil {
		t.Fatalf("CheckCommit(%q) accepted a SHA-256 object name that agents cannot fetch", head)
	}

	r := NewResolver(t.TempDir(), testlog.New(t))
	got, err := r.Resolve(context.Background(), repo.URL, Credentials{}, []string{"main"})
	if !errors.Is(err, gitremote.ErrObjectFormat) {
		t.Fatalf("Resolve of a SHA-256 repository = %v, %v; want ErrObjectFormat", got, err)
	}
	if retry.IsTransient(err) {
		t.Errorf("retry.IsTransient(%v) = true; polling again cannot help", err)
	}
	if !strings.Contains(err.Error(), "SHA-256") || !strings.Contains(err.Error(), gitremote.RedactURL(repo.URL)) {
		t.Errorf("error %q does not name the repository and its object format", err)
	}
}
