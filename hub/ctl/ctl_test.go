package ctl_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestLogin(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	s := newSession(t, h)
	cfgPath := s.env["DROVER_CONFIG"]

	// A well-formed token the hub never issued.
	s.fails(1, "", "login", "--server", h.url, "--token", "aaaaaaaa."+strings.Repeat("b", 32))
	if _, err := os.Stat(cfgPath); !os.IsNotExist(err) {
		t.Fatalf("config written after a refused login: %v", err)
	}
	s.fails(2, "", "login", "--server", h.url)
	s.fails(1, h.admin, "login", "--server", "127.0.0.1:1")

	r := s.must(h.admin+"\n", "login", "--server", h.url)
	if strings.Contains(r.stdout+r.stderr, h.admin) {
		t.Errorf("login printed the token")
	}
	fi, err := os.Stat(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(cfgPath))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("config directory mode %v, want 0700", di.Mode().Perm())
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Server, Token string }
	if err := yaml.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	if saved.Server != h.url || saved.Token != h.admin {
		t.Errorf("saved server %q and a token of %d bytes, want %q and the admin token", saved.Server, len(saved.Token), h.url)
	}

	// A config file in a directory others share: the directory keeps its
	// mode, the file alone is private.
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	inShared := newSession(t, h)
	inShared.env["DROVER_CONFIG"] = filepath.Join(shared, "c.yaml")
	inShared.must(h.admin+"\n", "login", "--server", h.url)
	if di, err := os.Stat(shared); err != nil {
		t.Fatal(err)
	} else if di.Mode().Perm() != 0o755 {
		t.Errorf("login changed the shared directory's mode to %v, want 0755 as it was", di.Mode().Perm())
	}
	if fi, err := os.Stat(filepath.Join(shared, "c.yaml")); err != nil {
		t.Fatalf("config file in a shared directory: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("config file in a shared directory has mode %v, want 0600", fi.Mode().Perm())
	}

	// The saved login is used from now on.
	s.must("", "status")
	// The flag wins over the saved token.
	s.fails(1, "", "status", "--token", "aaaaaaaa."+strings.Repeat("b", 32))

	// Without any token the hub says who to ask, and droverctl how.
	anon := newSession(t, h)
	r = anon.fails(1, "", "get", "apps", "--server", h.url)
	if !strings.Contains(r.stderr, "hint: run droverctl login") {
		t.Errorf("no login hint on 401:\n%s", r.stderr)
	}
	anon.fails(1, "", "get", "apps")
	s.transcript.Write(anon.transcript.Bytes())
	s.golden("login")
}

func TestTokens(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	s := newSession(t, h)
	s.login()

	r := s.must("", "token", "create", "--ttl", "48h", "--reusable", "--labels", "env=prod,region=eu", "--description", "edge clusters")
	token := strings.TrimSuffix(r.stdout, "\n")
	if !tokenText.MatchString(token) || tokenText.FindString(token) != token {
		t.Fatalf("token create printed %q on stdout, want the token alone", r.stdout)
	}
	if strings.Contains(r.stderr, token) || !strings.Contains(r.stderr, "drover-agent") {
		t.Errorf("token create stderr should hint at the agent without repeating the token:\n%s", r.stderr)
	}
	id, _, _ := strings.Cut(token, ".")
	// Placeholders as long as what they replace keep the columns aligned.
	s.replace(id, "<joinid>")
	s.must("", "token", "list")
	s.fails(2, "", "token", "create", "--labels", "env")
	s.fails(1, "", "token", "create", "--ttl", "forever")
	s.must("", "token", "delete", id)
	s.must("", "token", "list")
	s.fails(1, "", "token", "delete", id)

	r = s.must("", "apitoken", "create", "ci", "--role", "viewer", "--ttl", "720h")
	viewer := strings.TrimSuffix(r.stdout, "\n")
	vid, _, _ := strings.Cut(viewer, ".")
	aid, _, _ := strings.Cut(h.admin, ".")
	s.replace(vid, "<vwr-id>", aid, "<adm-id>")
	s.fails(2, "", "apitoken", "create", "ci2")
	s.fails(1, "", "apitoken", "create", "ci2", "--role", "root")

	// A viewer reads but changes nothing; the hint says why.
	s.must("", "get", "apps", "--token", viewer)
	app := s.writeFile("app.yaml", `apiVersion: drover.dev/v1
kind: Application
metadata: {name: web}
spec:
  source: {repoURL: "https://git.example.com/fleet.git"}
`)
	r = s.fails(1, "", "apply", "-f", app, "--token", viewer)
	if !strings.Contains(r.stderr, "hint: your token's role may not do this") {
		t.Errorf("no role hint on 403:\n%s", r.stderr)
	}
	s.fails(1, "", "--token", viewer, "apitoken", "delete", aid)
	s.must("", "apitoken", "list")
	s.must("", "apitoken", "delete", vid)
	s.fails(1, "", "get", "apps", "--token", viewer)
	s.golden("tokens")
}

// fleetRepo is a Git repository with an application's manifests.
func fleetRepo(t *testing.T) *testbed.Repo {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	repo.Commit(t, "web v1", map[string]string{"web/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: \"1\"}\n"})
	return repo
}

const webApp = `# The web application, on every production cluster.
apiVersion: drover.dev/v1
kind: Application
metadata:
  name: web
spec:
  source:
    repoURL: REPO
    ref: main
    path: web
  render:
    namespace: web
  placement:
    selector:
      matchLabels:
        env: prod
  syncPolicy:
    automated: true
    prune: PRUNE
`

func webManifest(repoURL string, prune bool) string {
	return strings.NewReplacer("REPO", repoURL, "PRUNE", fmt.Sprint(prune)).Replace(webApp)
}

// waitRelease waits until the application has its first release: a new
// application's ref is resolved in the background.
func (h *testHub) waitRelease(t *testing.T, app string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		rels, err := h.Store().ListReleases(ctx, app, 1)
		if err != nil {
			t.Fatalf("list releases of %s: %v", app, err)
		}
		if len(rels) > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("application %s has no release after a minute", app)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitAssigned waits until the cluster's assignment runs app at commit: the
// fleet follows a new release right after the store has it.
func (h *testHub) waitAssigned(t *testing.T, cluster, app, commit string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		for _, a := range h.Fleet().Assignment(cluster).GetApplications() {
			if a.GetName() == app && a.GetCommit() == commit {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster %s does not run %s at %s after a minute", cluster, app, commit)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestApply(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	repo := fleetRepo(t)
	s := newSession(t, h)
	s.replace(repo.URL, "http://GIT/fleet.git")
	s.login()

	app := s.writeFile("web.yaml", webManifest(repo.URL, true))
	s.must("", "apply", "-f", app)
	h.waitRelease(t, "web")
	c1 := repo.Head(t)
	s.replace(c1, "<commit-1>", c1[:7], "<sha-1>")
	s.must("", "apply", "-f", app)
	s.must(webManifest(repo.URL, false), "apply", "-f", "-")
	s.must("", "get", "apps")

	// Every document is checked before anything is sent: the valid first
	// document of a file with a bad second one is not applied.
	bad := map[string]string{
		"unknown-field.yaml": `apiVersion: drover.dev/v1
kind: Application
metadata: {name: api}
spec:
  source: {repoURL: "https://git.example.com/fleet.git", path: api}
---
apiVersion: drover.dev/v1
kind: Application
metadata: {name: worker}
spec:
  source: {repoUrl: "https://git.example.com/fleet.git", branch: main}
  syncPolicy: {prune: true, selfheal: true}
`,
		"bad-selector.yaml": `apiVersion: drover.dev/v1
kind: Application
metadata: {name: api}
spec:
  source: {repoURL: "https://git.example.com/fleet.git"}
  placement:
    selector:
      matchExpressions:
      - {key: env, operator: Equals, values: [prod]}
`,
		"bad-kind.yaml": `apiVersion: drover.dev/v1
kind: Deployment
metadata: {name: api}
`,
		"bad-version.yaml": `apiVersion: drover.dev/v2
kind: Application
metadata: {name: api}
spec: {}
`,
		"bad-top.yaml": `apiVersion: drover.dev/v1
kind: Application
metadata: {name: api, namespace: default}
spec:
  source: {repoURL: "https://git.example.com/fleet.git"}
status: {}
`,
		"bad-name.yaml": `apiVersion: drover.dev/v1
kind: Application
metadata: {name: API_v2}
spec:
  source: {repoURL: "file:///etc"}
`,
	}
	for _, name := range sortedNames(bad) {
		r := s.fails(1, "", "apply", "-f", s.writeFile(name, bad[name]))
		if !strings.Contains(r.stderr, name) {
			t.Errorf("%s: error does not name the file:\n%s", name, r.stderr)
		}
	}
	r := s.run("", "get", "apps", "-o", "json")
	var list droverv1.ListApplicationsResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("get apps -o json does not parse: %v\n%s", err, r.stdout)
	}
	if n := len(list.GetApplications()); n != 1 || list.GetApplications()[0].GetApplication().GetName() != "web" {
		t.Errorf("after failed applies: %d applications, want only web", n)
	}
	if p := list.GetApplications()[0].GetApplication().GetSpec().GetSyncPolicy(); p.GetPrune() || !p.GetAutomated() {
		t.Errorf("web's sync policy %v, want the last applied (automated, no prune)", p)
	}
	s.fails(2, "", "apply")
	s.fails(1, "", "apply", "-f", filepath.Join(s.dir, "missing.yaml"))
	s.golden("apply")
}

func TestApplications(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startHub(t)
	repo := fleetRepo(t)
	for name, labels := range map[string]map[string]string{
		"prod-eu": {"env": "prod", "region": "eu"},
		"prod-us": {"env": "prod", "region": "us"},
		"staging": {"env": "staging"},
	} {
		h.registerCluster(t, name, labels)
	}
	s := newSession(t, h)
	s.replace(repo.URL, "http://GIT/fleet.git")
	s.login()

	s.must("", "apply", "-f", s.writeFile("web.yaml", webManifest(repo.URL, true)))
	h.waitRelease(t, "web")
	c1 := repo.Head(t)
	s.replace(c1, "<commit-1>", c1[:7], "<sha-1>")
	h.waitAssigned(t, "prod-eu", "web", c1)
	h.waitAssigned(t, "prod-us", "web", c1)

	// What prod-eu's and prod-us's agents would report.
	st := h.Store()
	longAgo := time.Now().Add(-3 * time.Hour)
	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "v0.1.0"}
	for _, c := range []string{"prod-eu", "prod-us"} {
		if err := st.MarkConnected(ctx, c, "hub-test", "10.0.0.7:51234", facts, longAgo); err != nil {
			t.Fatal(err)
		}
	}
	eu := h.Fleet().Assignment("prod-eu").GetVersion()
	s.replace(eu, "<assignment-eu-1>")
	if err := st.RecordAck(ctx, "prod-eu", eu, "", longAgo); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordAck(ctx, "prod-us", "", "render web: kustomization.yaml: no such file", longAgo); err != nil {
		t.Fatal(err)
	}
	s.replace(h.Fleet().Assignment("prod-us").GetVersion(), "<assignment-us-1>")
	observed := timestamppb.New(time.Now().Add(-time.Hour))
	if err := st.WriteStatuses(ctx, []*droverv1.ApplicationStatus{{
		Cluster: "prod-eu", Application: "web", Commit: c1, ObservedAt: observed,
		Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY,
		Resources: []*droverv1.ResourceStatus{
			{Version: "v1", Kind: "ConfigMap", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY},
			{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY, Drifted: true, Message: "replicas changed\tby hand"},
		},
	}, {
		Cluster: "prod-us", Application: "web", Commit: c1, ObservedAt: observed,
		Sync: droverv1.SyncState_SYNC_STATE_FAILED, Health: droverv1.Health_HEALTH_DEGRADED,
		Message: "apply Deployment web/web: admission webhook \"policy\" denied the request",
	}, {
		// staging ran web before its labels changed; its agent has not
		// confirmed the removal yet.
		Cluster: "staging", Application: "web", Commit: c1, ObservedAt: observed,
		Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY,
		Resources: []*droverv1.ResourceStatus{{Version: "v1", Kind: "ConfigMap", Namespace: "web", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY}},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.MarkRemoving(ctx, map[string][]string{"staging": nil}); err != nil {
		t.Fatal(err)
	}

	s.must("", "get", "apps")
	s.must("", "get", "apps", "-o", "wide")
	s.must("", "describe", "app", "web")
	s.must("", "describe", "cluster", "prod-eu")
	s.must("", "describe", "cluster", "prod-us")
	s.must("", "describe", "cluster", "staging")

	if r := s.must("", "app", "refresh", "web"); !strings.Contains(r.stdout, c1+" (no new release)") {
		t.Errorf("app refresh without a new commit printed %q, want commit %s and no new release", r.stdout, c1)
	}
	c2 := repo.Commit(t, "web v2", map[string]string{"web/config.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: \"2\"}\n"})
	s.replace(c2, "<commit-2>", c2[:7], "<sha-2>")
	if r := s.must("", "app", "refresh", "web"); !strings.Contains(r.stdout, c2+" (new release)") {
		t.Errorf("app refresh after a new commit printed %q, want commit %s as a new release", r.stdout, c2)
	}
	s.must("", "describe", "application", "web")
	// A commit outside web's path: a release whose clusters keep c2's
	// content, which describe says.
	c3 := repo.Commit(t, "docs", map[string]string{"docs/readme.md": "# fleet\n"})
	s.replace(c3, "<commit-3>", c3[:7], "<sha-3>")
	s.must("", "app", "refresh", "web")
	s.must("", "describe", "application", "web")
	s.must("", "get", "events", "--app", "web")
	s.must("", "get", "events", "--app", "web", "--kind", "release.", "--limit", "1")
	s.fails(1, "", "describe", "app", "nope")
	s.fails(1, "", "app", "refresh", "nope")

	s.must("", "delete", "app", "web")
	s.must("", "get", "apps")
	s.fails(1, "", "delete", "app", "web")
	s.golden("applications")
}

func TestClusters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := startHub(t)
	for name, labels := range map[string]map[string]string{
		"prod-eu": {"env": "prod", "region": "eu"},
		"prod-us": {"env": "prod", "region": "us"},
		"staging": {"env": "staging"},
	} {
		h.registerCluster(t, name, labels)
	}
	facts := &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "v0.1.0"}
	if err := h.Store().MarkConnected(ctx, "prod-us", "hub-test", "10.0.0.8:40000", facts, time.Now().Add(-3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	s := newSession(t, h)
	s.login()
	// Pages of two: every list below takes several requests.
	s.pageSize = 2

	s.requests.count("/api/v1/clusters")
	s.must("", "get", "clusters")
	if n := s.requests.count("/api/v1/clusters"); n != 2 {
		t.Errorf("get clusters of 3 in pages of 2 made %d requests, want 2", n)
	}
	s.must("", "get", "clusters", "-l", "env=prod")
	s.must("", "get", "cluster", "-o", "wide", "--selector", "region in (eu,us),env!=staging")
	s.fails(2, "", "get", "clusters", "-l", "env in (prod")
	s.fails(2, "", "get", "clusters", "-o", "table")

	s.must("", "label", "cluster", "staging", "tier=2", "region=eu")
	s.must("", "label", "cluster", "staging", "tier-")
	s.fails(2, "", "label", "cluster", "staging", "tier")
	s.fails(2, "", "label", "cluster", "staging", "tier=1", "tier-")
	s.fails(2, "", "label", "cluster", "staging")
	s.fails(1, "", "label", "cluster", "staging", "bad key=1")
	s.fails(1, "", "label", "cluster", "nope", "a=b")
	s.must("", "get", "clusters", "-l", "region=eu")

	// A Cluster document sets the labels to exactly those it lists.
	labels := s.writeFile("clusters.yaml", `apiVersion: drover.dev/v1
kind: Cluster
metadata:
  name: staging
  labels: {env: staging, team: web}
---
apiVersion: drover.dev/v1
kind: Cluster
metadata:
  name: prod-us
  labels: {env: prod, region: us}
`)
	s.must("", "apply", "-f", labels)
	s.must("", "apply", "-f", labels)
	s.fails(1, "", "apply", "-f", s.writeFile("unknown.yaml", "apiVersion: drover.dev/v1\nkind: Cluster\nmetadata: {name: nope, labels: {env: prod}}\n"))
	s.fails(1, "", "apply", "-f", s.writeFile("spec.yaml", "apiVersion: drover.dev/v1\nkind: Cluster\nmetadata: {name: staging}\nspec: {labels: {env: prod}}\n"))
	s.fails(1, "", "apply", "-f", s.writeFile("bad-label.yaml", "apiVersion: drover.dev/v1\nkind: Cluster\nmetadata: {name: staging, labels: {env: \"not valid!\"}}\n"))

	s.must("", "revoke", "cluster", "prod-us")
	s.must("", "delete", "cluster", "staging")
	s.fails(1, "", "describe", "cluster", "staging")
	s.must("", "get", "clusters")
	s.requests.count("/api/v1/events")
	s.must("", "get", "events", "--kind", "cluster.")
	if n := s.requests.count("/api/v1/events"); n != 3 {
		t.Errorf("get events of 5 in pages of 2 made %d requests, want 3", n)
	}
	s.must("", "get", "clusters", "-o", "yaml")
	s.golden("clusters")

	// An agent that heartbeats now is online; -o json is the API's own
	// message and parses back.
	if err := h.Store().MarkConnected(ctx, "prod-eu", "hub-test", "10.0.0.7:51234", facts, time.Now()); err != nil {
		t.Fatal(err)
	}
	r := s.must("", "get", "clusters", "-o", "json")
	var list droverv1.ListClustersResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("get clusters -o json does not parse: %v\n%s", err, r.stdout)
	}
	got := map[string]string{}
	for _, c := range list.GetClusters() {
		got[c.GetName()] = fmt.Sprintf("online=%t revoked=%t labels=%v", c.GetOnline(), c.GetRevoked(), c.GetLabels())
	}
	want := map[string]string{
		"prod-eu": "online=true revoked=false labels=map[env:prod region:eu]",
		"prod-us": "online=false revoked=true labels=map[env:prod region:us]",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("get clusters -o json:\n got %v\nwant %v", got, want)
	}
	if r := s.must("", "get", "clusters", "-l", "env=prod"); !strings.Contains(r.stdout, "Online") {
		t.Errorf("prod-eu not shown Online:\n%s", r.stdout)
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	// No hub: none of these gets as far as a request.
	s := &session{t: t, dir: t.TempDir(), env: map[string]string{}}
	s.env["DROVER_CONFIG"] = filepath.Join(s.dir, "config.yaml")
	s.replace(s.dir+"/", "")
	s.fails(2, "")
	s.fails(2, "", "frobnicate")
	s.fails(2, "", "get")
	s.fails(2, "", "get", "pods")
	s.fails(2, "", "describe", "cluster")
	s.fails(2, "", "describe", "cluster", "a", "b")
	s.fails(2, "", "get", "clusters", "--bogus")
	s.fails(2, "", "get", "events", "--limit", "0")
	s.fails(2, "", "repo", "set", "https://git.example.com/x.git", "--username", "u")
	s.fails(2, "", "repo", "set", "https://git.example.com/x.git", "--ssh-key-file", "k")
	s.fails(1, "", "get", "apps")
	s.fails(1, "", "get", "apps", "--server", "ftp://hub")
	s.must("", "describe", "cluster", "--help")
	s.must("", "version")
	// The full help is not worth a golden; it must list the commands.
	s.noRecord = true
	r := s.must("", "help")
	s.noRecord = false
	for _, cmd := range []string{"login", "get clusters", "apply", "token create", "repo set"} {
		if !strings.Contains(r.stdout, cmd) {
			t.Errorf("help does not list %q", cmd)
		}
	}
	s.fails(2, "", "get", "clusters", "extra")
	s.must("", "get", "apps", "-h")
	s.golden("usage")
}

func TestRepositories(t *testing.T) {
	t.Parallel()
	h := startHub(t)
	s := newSession(t, h)
	s.login()
	key := s.writeFile("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
	hosts := s.writeFile("known_hosts", "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")

	r := s.must("s3cret-token\n", "repo", "set", "https://git.example.com/fleet.git", "--username", "deploy", "--password-stdin")
	if strings.Contains(r.stdout+r.stderr, "s3cret") {
		t.Errorf("repo set printed the password")
	}
	s.must("", "repo", "set", "ssh://git@git.example.com/fleet.git", "--ssh-key-file", key, "--known-hosts-file", hosts)
	s.fails(2, "", "repo", "set", "https://git.example.com/fleet.git", "--username", "deploy", "--password-stdin")
	s.fails(1, "pw", "repo", "set", "file:///etc/passwd", "--username", "deploy", "--password-stdin")
	r = s.must("", "repo", "list")
	if strings.Contains(r.stdout, "s3cret") || strings.Contains(r.stdout, "not a real key") {
		t.Errorf("repo list shows a secret:\n%s", r.stdout)
	}
	s.must("", "repo", "delete", "https://git.example.com/fleet.git")
	s.fails(1, "", "repo", "delete", "https://git.example.com/fleet.git")
	s.must("", "repo", "list", "-o", "yaml")
	s.golden("repositories")
}
