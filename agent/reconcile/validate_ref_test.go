package reconcile

import (
	"strings"
	"testing"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestValidateRef checks the ref an assignment carries: empty (a hub that
// sends none, or a pinned SHA), HEAD, or a valid ref name; anything else
// refuses the assignment with a message naming the field.
func TestValidateRef(t *testing.T) {
	assignment := func(ref string) *droverv1.Assignment {
		return &droverv1.Assignment{Version: "v1", Applications: []*droverv1.AppAssignment{{
			Name:    "web",
			RepoUrl: "https://git.example.com/org/web.git",
			Commit:  sha1,
			Render:  droverv1.RenderType_RENDER_TYPE_DIRECTORY,
			Ref:     ref,
		}}}
	}
	for _, ref := range []string{"", "HEAD", "main", "release/1.x", "refs/heads/main", "refs/tags/v1.2"} {
		if err := Validate(assignment(ref)); err != nil {
			t.Errorf("ref %q: %v", ref, err)
		}
	}
	for _, ref := range []string{"-main", "a..b", "my branch", "main.lock", "v1^{}", strings.Repeat("a", 256)} {
		err := Validate(assignment(ref))
		if err == nil || !strings.Contains(err.Error(), "applications[0].ref") {
			t.Errorf("ref %q: %v, want an error naming applications[0].ref", ref, err)
		}
	}
}
