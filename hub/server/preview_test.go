package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestPreviewAssignment checks what `droverctl render` starts from: an
// application's part of one cluster's assignment, with that cluster's
// overrides and variables resolved, at the current or a named release,
// never with the repository's credentials, and readable by a viewer.
func TestPreviewAssignment(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "charts")
	c1 := repo.Commit(t, "chart v1", map[string]string{"web/Chart.yaml": "name: web\nversion: 1.0.0\n"})
	h := startHub(t)
	const password = "preview-s3cret-password"
	h.mustAPI(t, "PUT", "/api/v1/repositories", &droverv1.SetRepositoryCredentialsRequest{
		Url: repo.URL, Credentials: &droverv1.RepoCredentials{Username: "bot", Password: password},
	}, nil)

	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "prod", "region": "eu"}})
	prod := h.mustRegister(t, tok, "prod-1")
	prod.connect(t, "") // reports the cluster's facts
	tok = h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "staging"}})
	h.mustRegister(t, tok, "staging-1")

	app := webApp("web", repo.URL, map[string]string{"env": "prod"})
	app.Spec.Render = &droverv1.Render{Type: "helm", Namespace: "web"}
	app.Spec.Overrides = []*droverv1.Override{{
		Selector:   &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}},
		HelmValues: "replicas: 3\n",
		Variables:  map[string]string{"tier": "front"},
	}}
	h.mustAPI(t, "POST", "/api/v1/applications", app, nil)
	eventually(t, "the first release", func() bool {
		var got droverv1.GetApplicationResponse
		h.mustAPI(t, "GET", "/api/v1/applications/web", nil, &got)
		return len(got.GetReleases()) == 1
	})
	c2 := repo.Commit(t, "chart v2", map[string]string{"web/Chart.yaml": "name: web\nversion: 1.1.0\n"})
	var refreshed droverv1.RefreshApplicationResponse
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, &refreshed)
	if refreshed.GetCommit() != c2 {
		t.Fatalf("refresh resolved %s, want %s", refreshed.GetCommit(), c2)
	}

	var viewer droverv1.CreateAPITokenResponse
	h.mustAPI(t, "POST", "/api/v1/api-tokens", &droverv1.CreateAPITokenRequest{Name: "reader", Role: "viewer"}, &viewer)
	preview := func(path string) (int, string, *droverv1.PreviewAssignmentResponse) {
		var resp droverv1.PreviewAssignmentResponse
		code, body := h.api(t, viewer.GetToken(), "GET", path, nil, &resp)
		return code, body, &resp
	}

	code, body, now := preview("/api/v1/applications/web/clusters/prod-1/assignment")
	if code != http.StatusOK {
		t.Fatalf("preview: HTTP %d: %s", code, body)
	}
	aa := now.GetAssignment()
	if aa.GetCommit() != c2 || aa.GetRender() != droverv1.RenderType_RENDER_TYPE_HELM || aa.GetReleaseName() != "web" ||
		aa.GetHelmValues() != "replicas: 3\n" || aa.GetVariables()["cluster.name"] != "prod-1" || aa.GetVariables()["tier"] != "front" {
		t.Fatalf("preview = %v, want web at %s with prod-1's override and variables", aa, c2)
	}
	if aa.GetCredentials() != nil || strings.Contains(body, password) {
		t.Fatalf("preview returned the repository's credentials: %s", body)
	}
	if now.GetFacts().GetNodeCount() != 3 {
		t.Errorf("preview facts = %v, want what prod-1's agent reported (3 nodes)", now.GetFacts())
	}

	if code, body, old := preview("/api/v1/applications/web/clusters/prod-1/assignment?commit=" + c1); code != http.StatusOK || old.GetAssignment().GetCommit() != c1 {
		t.Fatalf("preview at %s: HTTP %d %s", c1, code, body)
	}
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/api/v1/applications/web/clusters/staging-1/assignment", http.StatusBadRequest, "not placed"},
		{"/api/v1/applications/nope/clusters/prod-1/assignment", http.StatusNotFound, "not found"},
		{"/api/v1/applications/web/clusters/nope/assignment", http.StatusNotFound, "not found"},
		{"/api/v1/applications/web/clusters/prod-1/assignment?commit=main", http.StatusBadRequest, "commit"},
	} {
		if code, body, _ := preview(tc.path); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: HTTP %d %s, want %d mentioning %q", tc.path, code, body, tc.code, tc.want)
		}
	}
}
