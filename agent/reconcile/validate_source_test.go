package reconcile

import (
	"strings"
	"testing"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestValidateCommitPerSourceType checks that a Git source pins a full
// lower-case SHA, a Helm repository or OCI source a revision
// VERSION@sha256:HEX, and that a source type the agent does not know is
// refused rather than fetched as Git.
func TestValidateCommitPerSourceType(t *testing.T) {
	rev := "1.2.0@sha256:" + strings.Repeat("ab", 32)
	git, helm, oci := droverv1.SourceType_SOURCE_TYPE_GIT, droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY, droverv1.SourceType_SOURCE_TYPE_OCI
	for _, tc := range []struct {
		st     droverv1.SourceType
		commit string
		chart  string
		want   string // "" accepts
	}{
		{droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED, sha1, "", ""},
		{git, sha1, "", ""},
		{git, rev, "", "applications[0].commit"},
		{helm, rev, "web", ""},
		{oci, rev, "", ""},
		{helm, sha1, "web", "is not a revision VERSION@sha256:HEX"},
		{oci, "1.2.0@sha256:" + strings.Repeat("AB", 32), "", "is not a revision"},
		{oci, "1.2.0", "", "is not a revision"},
		{helm, rev, "", "applications[0].chart"},
		{droverv1.SourceType(42), sha1, "", "applications[0].source_type: unknown source type 42"},
	} {
		a := &droverv1.Assignment{Version: "v1", Applications: []*droverv1.AppAssignment{{
			Name: "web", RepoUrl: "https://example.com/charts", Commit: tc.commit, SourceType: tc.st, Chart: tc.chart,
			Render: droverv1.RenderType_RENDER_TYPE_HELM,
		}}}
		err := Validate(a)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v %q: %v", tc.st, tc.commit, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v %q chart %q: %v, want an error containing %q", tc.st, tc.commit, tc.chart, err, tc.want)
		}
	}
}
