package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestUnrelatedCommitsReachNoAgent is a monorepo with web beside another
// application's files: commits that touch only the other files make
// releases of web, but no cluster's assignment changes and no agent
// fetches. The next commit under web's path is fetched once by each
// cluster's agent and applied.
func TestUnrelatedCommitsReachNoAgent(t *testing.T) {
	git := testbed.GitServer(t, testbed.WithFetchOwners())
	repo := git.CreateRepo(t, "monorepo")
	files := testbed.ExampleApp("nginx:1.23.0")
	files["apps/other/config.yaml"] = "revision: 0\n"
	c1 := repo.Commit(t, "web, and another application", files)

	clusters := []string{"prod-1", "prod-2"}
	fl := newFleet(t, map[string]map[string]string{"prod-1": {"env": "prod"}, "prod-2": {"env": "prod"}})
	fl.do(http.MethodPost, "/api/v1/applications", webApplication(repo.URL), nil)
	for _, c := range clusters {
		fl.waitHealthy("web", c, c1)
	}
	fetches := func() map[string]int {
		out := map[string]int{}
		for _, c := range clusters {
			out[c] = git.FetchesBy(fl.agents[c].Process().Pid())
		}
		return out
	}
	versions := fl.ackedVersions(clusters)
	before := fetches()
	for c, n := range before {
		if n == 0 {
			t.Fatalf("the agent of %s runs web at %.7s but made no fetch the server tied to it", c, c1)
		}
	}

	const unrelated = 3
	for i := 1; i <= unrelated; i++ {
		ci := repo.Commit(t, "another application only", map[string]string{"apps/other/config.yaml": fmt.Sprintf("revision: %d\n", i)})
		fl.refresh("web")
		var app droverv1.GetApplicationResponse
		fl.do(http.MethodGet, "/api/v1/applications/web", nil, &app)
		if rel := app.GetReleases()[0]; rel.GetCommit() != ci || rel.GetContentCommit() != c1 || !rel.GetNoop() {
			t.Fatalf("after unrelated commit %d: release %.7s with content %.7s (noop %v), want %.7s with %.7s's", i,
				rel.GetCommit(), rel.GetContentCommit(), rel.GetNoop(), ci, c1)
		}
		// Settled: each agent has acknowledged the assignment the hub
		// wants now, so one it was sent has been fetched and applied.
		got := fl.ackedVersions(clusters)
		if n := fetches(); fmt.Sprint(n) != fmt.Sprint(before) {
			t.Fatalf("agents' fetches after unrelated commit %d: %v, were %v", i, n, before)
		}
		if got != versions {
			t.Fatalf("assignments after unrelated commit %d: %s, were %s", i, got, versions)
		}
	}

	c2 := repo.Commit(t, "web on nginx 1.24.0", map[string]string{"apps/web/deployment.yaml": testbed.ExampleApp("nginx:1.24.0")["apps/web/deployment.yaml"]})
	fl.refresh("web")
	for _, c := range clusters {
		fl.waitHealthy("web", c, c2)
	}
	after := fetches()
	for _, c := range clusters {
		if n := after[c] - before[c]; n != 1 {
			t.Errorf("the agent of %s fetched %d times for one commit under web's path, want once", c, n)
		}
		d, err := fl.deployment(c)
		if err != nil || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.24.0" {
			t.Errorf("%s runs %v (err %v), want nginx:1.24.0", c, d.Spec.Template.Spec.Containers, err)
		}
	}
	t.Logf("figure: fetches by agent: %v at the first release, the same after %d unrelated commits, %v after one commit under web's path", before, unrelated, after)
	if n := git.UnownedFetches(); n != 0 {
		t.Errorf("%d fetches the server tied to no process", n)
	}
}

// ackedVersions waits until every cluster's agent has acknowledged the
// assignment the hub wants it to run, and returns those versions.
func (f *fleet) ackedVersions(clusters []string) string {
	f.t.Helper()
	var b strings.Builder
	for _, c := range clusters {
		var version string
		testbed.Eventually(f.t, c+" acknowledges its assignment", waitConverge, func() (bool, string) {
			cl, err := f.cluster(c)
			version = cl.GetAssignmentVersion()
			return err == nil && version != "" && cl.GetAckedVersion() == version,
				fmt.Sprintf("wants %q, acknowledged %q, err %v", version, cl.GetAckedVersion(), err)
		})
		fmt.Fprintf(&b, "%s=%s ", c, version)
	}
	return b.String()
}
