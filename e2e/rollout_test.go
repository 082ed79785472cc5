package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// rolloutDeployment is the web Deployment at image; a neverReady one has
// pods that never become ready and a deadline short enough for the
// Deployment to report it.
func rolloutDeployment(image string, neverReady bool) string {
	labels, deadline := "{app: nginx}", ""
	if neverReady {
		labels = fmt.Sprintf("{app: nginx, %s: \"true\"}", testbed.NeverReadyLabel)
		deadline = "  progressDeadlineSeconds: 10\n"
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: web
spec:
  replicas: 2
%s  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: %s
    spec:
      containers:
      - name: nginx
        image: %s
`, deadline, labels, image)
}

// rolloutApplication places web on every cluster with env=prod and rolls
// its releases out canary first, then Europe behind an approval, then the
// rest, rolling back on failure.
func rolloutApplication(repoURL string) *droverv1.Application {
	a := webApplication(repoURL)
	a.Spec.Rollout = &droverv1.RolloutStrategy{
		OnFailure:        "rollback",
		ProgressDeadline: "40s",
		OfflineTimeout:   "20s",
		Waves: []*droverv1.RolloutWave{
			{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}, MaxParallel: structpb.NewNumberValue(1), Soak: "5s"},
			{Name: "europe", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}}, MaxParallel: structpb.NewNumberValue(1), RequireApproval: true},
			{Name: "rest", MaxParallel: structpb.NewStringValue("50%")},
		},
	}
	return a
}

func (f *fleet) rollout(app string) *droverv1.RolloutStatus {
	var r droverv1.GetRolloutResponse
	f.api.do("GET", "/api/v1/applications/"+app+"/rollout", nil, &r)
	return r.GetRollout()
}

func (f *fleet) waitRolloutPhase(app, commit, phase string) *droverv1.RolloutStatus {
	f.t.Helper()
	var r *droverv1.RolloutStatus
	testbed.Eventually(f.t, fmt.Sprintf("rollout of %.7s %s", commit, phase), 3*time.Minute, func() (bool, string) {
		r = f.rollout(app)
		return r.GetCommit() == commit && r.GetPhase() == phase, fmt.Sprintf("rollout %v", r)
	})
	return r
}

// image is the image the cluster's web Deployment asks for, "" if none.
func (f *fleet) image(cluster string) string {
	d, err := f.deployment(cluster)
	if err != nil {
		return ""
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// TestFleetRollout moves releases across five real clusters: a canary
// that soaks, Europe behind an approval, then the rest; a release whose
// pods never become ready is rolled back from the canary before any other
// cluster gets it; an offline cluster is skipped and catches up.
func TestFleetRollout(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	m1 := testbed.ExampleApp("nginx:1.23.0")
	m1["apps/web/deployment.yaml"] = rolloutDeployment("nginx:1.23.0", false)
	c1 := repo.Commit(t, "web on nginx 1.23.0", m1)

	f := newFleet(t, map[string]map[string]string{
		"canary": {"env": "prod", "ring": "canary", "region": "eu"},
		"eu-1":   {"env": "prod", "ring": "main", "region": "eu"},
		"eu-2":   {"env": "prod", "ring": "main", "region": "eu"},
		"us-1":   {"env": "prod", "ring": "main", "region": "us"},
		"us-2":   {"env": "prod", "ring": "main", "region": "us"},
	})
	all := []string{"canary", "eu-1", "eu-2", "us-1", "us-2"}
	others := all[1:]
	f.api.do("POST", "/api/v1/applications", rolloutApplication(repo.URL), nil)

	t.Run("first release everywhere", func(t *testing.T) {
		for _, c := range all {
			f.waitHealthy("web", c, c1)
		}
		f.waitRolloutPhase("web", c1, "completed")
	})

	c2 := ""
	t.Run("canary, soak, approval, the rest", func(t *testing.T) {
		c2 = repo.Commit(t, "web on nginx 1.24.0", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.24.0", false)})
		f.refresh("web")
		// Until Europe is approved, only the canary moves.
		stayOnC1 := func() string {
			for _, c := range others {
				if img := f.image(c); img != "nginx:1.23.0" {
					t.Fatalf("%s runs %s before the approval of europe, want nginx:1.23.0", c, img)
				}
				if s := f.status("web", c); s.GetCommit() != c1 {
					t.Fatalf("hub says %s is at %.7s before the approval of europe, want %.7s", c, s.GetCommit(), c1)
				}
			}
			return ""
		}
		testbed.Eventually(t, "canary Healthy at c2", 3*time.Minute, func() (bool, string) {
			stayOnC1()
			s := f.status("web", "canary")
			return s.GetCommit() == c2 && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY, fmt.Sprintf("hub says %v", s)
		})
		if img := f.image("canary"); img != "nginx:1.24.0" {
			t.Fatalf("canary runs %s, want nginx:1.24.0", img)
		}
		var r *droverv1.RolloutStatus
		testbed.Eventually(t, "europe waiting for approval", 2*time.Minute, func() (bool, string) {
			stayOnC1()
			r = f.rollout("web")
			return r.GetPhase() == "waiting-approval", fmt.Sprintf("rollout %v", r)
		})
		if !strings.Contains(r.GetWaiting(), "approval") || !strings.Contains(r.GetWaiting(), "europe") {
			t.Fatalf("waiting = %q, want the approval of europe", r.GetWaiting())
		}
		stayOnC1()

		// A hub restarted at the gate resumes there: same rollout, same
		// pins, still waiting, nothing sent to Europe or the US.
		before := r.GetId()
		f.stopHub()
		f.startHub()
		testbed.Eventually(t, "the restarted hub back at the gate", 2*time.Minute, func() (bool, string) {
			stayOnC1()
			r = f.rollout("web")
			return r.GetPhase() == "waiting-approval" && r.GetId() == before, fmt.Sprintf("rollout %v", r)
		})
		time.Sleep(3 * time.Second) // agents reconnect and report; nothing may move
		stayOnC1()

		f.api.do("POST", "/api/v1/applications/web/rollout/promote", nil, nil)
		for _, c := range others {
			f.waitHealthy("web", c, c2)
			if img := f.image(c); img != "nginx:1.24.0" {
				t.Fatalf("%s runs %s, want nginx:1.24.0", c, img)
			}
		}
		f.waitRolloutPhase("web", c2, "completed")
		for _, c := range all {
			f.waitHealthy("web", c, c2)
		}
	})

	t.Run("a release that never becomes ready is rolled back from the canary", func(t *testing.T) {
		c3 := repo.Commit(t, "web on nginx 1.25.0, never ready", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.25.0", true)})
		f.refresh("web")
		// Every poll also checks that no other cluster ever got c3.
		neverElsewhere := func() {
			for _, c := range others {
				d, err := f.deployment(c)
				if err != nil {
					t.Fatalf("get deployment on %s: %v", c, err)
				}
				if _, ok := d.Spec.Template.Labels[testbed.NeverReadyLabel]; ok || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.24.0" {
					t.Fatalf("%s got the bad release: template %v", c, d.Spec.Template)
				}
				if s := f.status("web", c); s.GetCommit() == c3 {
					t.Fatalf("hub says %s is at the bad release: %v", c, s)
				}
			}
		}
		testbed.Eventually(t, "the canary applies c3", 2*time.Minute, func() (bool, string) {
			neverElsewhere()
			d, err := f.deployment("canary")
			if err != nil {
				return false, err.Error()
			}
			_, ok := d.Spec.Template.Labels[testbed.NeverReadyLabel]
			return ok, fmt.Sprintf("canary template %v", d.Spec.Template.Labels)
		})
		var r *droverv1.RolloutStatus
		testbed.Eventually(t, "the rollout of c3 rolled back", 3*time.Minute, func() (bool, string) {
			neverElsewhere()
			if s := f.status("web", "canary"); s.GetCommit() == c3 && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY {
				t.Fatalf("the canary is Healthy at the never-ready release: %v", s)
			}
			r = f.rollout("web")
			return r.GetCommit() == c3 && r.GetPhase() == "rolled-back", fmt.Sprintf("rollout %v", r)
		})
		if r.GetPreviousCommit() != c2 {
			t.Fatalf("rolled back to %.7s, want %.7s", r.GetPreviousCommit(), c2)
		}
		testbed.Eventually(t, "the canary back on c2", 3*time.Minute, func() (bool, string) {
			neverElsewhere()
			d, err := f.deployment("canary")
			if err != nil {
				return false, err.Error()
			}
			_, bad := d.Spec.Template.Labels[testbed.NeverReadyLabel]
			s := f.status("web", "canary")
			ok := !bad && d.Spec.Template.Spec.Containers[0].Image == "nginx:1.24.0" &&
				s.GetCommit() == c2 && s.GetHealth() == droverv1.Health_HEALTH_HEALTHY
			return ok, fmt.Sprintf("canary template %v; hub says %v", d.Spec.Template, s)
		})
		neverElsewhere()
	})

	t.Run("an offline cluster is skipped and catches up", func(t *testing.T) {
		f.stopAgent("eu-2")
		c4 := repo.Commit(t, "web on nginx 1.26.0", map[string]string{"apps/web/deployment.yaml": rolloutDeployment("nginx:1.26.0", false)})
		f.refresh("web")
		f.waitRolloutPhase("web", c4, "waiting-approval")
		f.api.do("POST", "/api/v1/applications/web/rollout/promote", nil, nil)
		r := f.waitRolloutPhase("web", c4, "completed")
		skipped := false
		for _, c := range r.GetClusters() {
			if c.GetName() == "eu-2" {
				skipped = c.GetPhase() == "skipped"
			}
		}
		if !skipped {
			t.Fatalf("eu-2 not skipped: rollout %v", r)
		}
		for _, c := range []string{"canary", "eu-1", "us-1", "us-2"} {
			f.waitHealthy("web", c, c4)
		}
		if img := f.image("eu-2"); img != "nginx:1.24.0" {
			t.Fatalf("eu-2 runs %s while its agent is stopped, want nginx:1.24.0", img)
		}
		f.startAgent("eu-2")
		f.waitHealthy("web", "eu-2", c4)
		if img := f.image("eu-2"); img != "nginx:1.26.0" {
			t.Fatalf("eu-2 runs %s after catching up, want nginx:1.26.0", img)
		}
	})
}
