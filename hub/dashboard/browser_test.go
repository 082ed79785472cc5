package dashboard_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// testAgent speaks the agent protocol by hand: register, connect, ACK
// assignments and report statuses when the test says so.
type testAgent struct {
	t      *testing.T
	name   string
	stream grpc.BidiStreamingClient[droverv1.AgentMessage, droverv1.HubMessage]
	// assignments receives every assignment the hub sends.
	assignments chan *droverv1.Assignment
}

func startAgent(t *testing.T, h *server.Hub, joinToken, name string) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.CACertPEM())
	dial := func(tc *tls.Config) droverv1.AgentServiceClient {
		conn, err := grpc.NewClient(h.AgentAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		must(t, err)
		t.Cleanup(func() { conn.Close() })
		return droverv1.NewAgentServiceClient(conn)
	}
	key, csr, err := testbed.NewCSR(name)
	must(t, err)
	tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	resp, err := dial(tc).Register(ctx, &droverv1.RegisterRequest{JoinToken: joinToken, ClusterName: name, CsrPem: csr})
	must(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	cert, err := tls.X509KeyPair(resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	must(t, err)
	tc = tc.Clone()
	tc.Certificates = []tls.Certificate{cert}
	s, err := dial(tc).Connect(ctx)
	must(t, err)
	must(t, s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Hello{Hello: &droverv1.Hello{
		AgentVersion: "test", Facts: &droverv1.ClusterFacts{KubernetesVersion: "v1.37.2", NodeCount: 3, AgentVersion: "test"},
	}}}))
	a := &testAgent{t: t, name: name, stream: s, assignments: make(chan *droverv1.Assignment, 16)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			if as := m.GetAssignment(); as != nil {
				_ = s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Ack{Ack: &droverv1.AssignmentAck{Version: as.GetVersion(), Nonce: as.GetNonce()}}})
				a.assignments <- as
			}
		}
	}()
	return a
}

// waitForApp waits for an assignment that includes app.
func (a *testAgent) waitForApp(app string) string {
	a.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case as := <-a.assignments:
			for _, x := range as.GetApplications() {
				if x.GetName() == app && x.GetCommit() != "" {
					return x.GetCommit()
				}
			}
		case <-deadline:
			a.t.Fatalf("%s: no assignment with %s within 60s", a.name, app)
		}
	}
}

// waitForCommit waits for an assignment that runs app at commit.
func (a *testAgent) waitForCommit(app, commit string) {
	a.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case as := <-a.assignments:
			for _, x := range as.GetApplications() {
				if x.GetName() == app && x.GetCommit() == commit {
					return
				}
			}
		case <-deadline:
			a.t.Fatalf("%s: no assignment with %s at %s within 60s", a.name, app, commit)
		}
	}
}

// waitRollout waits until the rollout of shop is in phase, flushing the
// hub's batched status writes so the engine sees the reports.
func waitRollout(t *testing.T, h *server.Hub, token, phase string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		_ = h.FlushStatuses(context.Background())
		req, err := http.NewRequest("GET", "http://"+h.HTTPAddr()+"/api/v1/applications/shop/rollout", nil)
		must(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var r droverv1.GetRolloutResponse
		if resp.StatusCode == http.StatusOK && protojson.Unmarshal(raw, &r) == nil {
			if last = r.GetRollout().GetPhase(); last == phase {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("rollout of shop is %q after 60s, want %s", last, phase)
}

func (a *testAgent) report(app, commit string, health droverv1.Health, msg string) {
	a.t.Helper()
	must(a.t, a.stream.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{{
		Application: app, Commit: commit, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: health, Message: msg, ObservedAt: timestamppb.Now(),
		Resources: []*droverv1.ResourceStatus{{Kind: "Deployment", Namespace: "web", Name: "web", Health: health, Message: msg}},
	}}}}}))
}

// apiPost calls the hub's JSON admin API.
func apiPost(t *testing.T, h *server.Hub, token, path string, body []byte) []byte {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+h.HTTPAddr()+path, bytes.NewReader(body))
	must(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, raw)
	}
	return raw
}

// TestBrowser drives the dashboard of an in-process hub in headless
// Chromium: sign in, every page, a status change arriving without a
// reload, and the label-selector filter.
func TestBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: the dashboard's browser test needs it (Debian: apt-get install chromium; `make deps` does it as root)")
	}
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	repo.Commit(t, "web v1", map[string]string{"web/deploy.yaml": "kind: ConfigMap\n"})

	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.DatabaseURL = testbed.Postgres(t)
	cfg.AgentAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1", "localhost"}
	cfg.PollInterval = 5 * time.Second
	// A second replica joins late in the test, for the replicas page.
	peerA, peerB := testbed.FreeAddr(t), testbed.FreeAddr(t)
	cfg.Replica, cfg.PeerAddr, cfg.Peers = "hub-a", peerA, []string{peerB}
	cfg.GossipKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	h, err := server.Start(context.Background(), cfg, testlog.New(t), io.Discard)
	must(t, err)
	t.Cleanup(func() { h.Close() })
	rawTok, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-token"))
	must(t, err)
	token := strings.TrimSpace(string(rawTok))

	join := func(labels map[string]string) string {
		var resp droverv1.CreateJoinTokenResponse
		b, _ := protojson.Marshal(&droverv1.CreateJoinTokenRequest{Labels: labels})
		must(t, protojson.Unmarshal(apiPost(t, h, token, "/api/v1/join-tokens", b), &resp))
		return resp.GetToken()
	}
	eu := startAgent(t, h, join(map[string]string{"env": "prod", "region": "eu"}), "eu-1")
	us := startAgent(t, h, join(map[string]string{"env": "prod", "region": "us"}), "us-1")
	appJSON, _ := protojson.Marshal(app("web", repo.URL, "web", map[string]string{"env": "prod"}))
	apiPost(t, h, token, "/api/v1/applications", appJSON)
	commit := eu.waitForApp("web")
	us.waitForApp("web")
	eu.report("web", commit, droverv1.Health_HEALTH_HEALTHY, "all replicas ready")
	us.report("web", commit, droverv1.Health_HEALTH_PROGRESSING, "1/2 replicas ready")

	shots, err := os.MkdirTemp("", "drover-dashboard-screenshots-")
	must(t, err)
	t.Logf("screenshots in %s", shots)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless, chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancel()
	ctx, cancel := context.WithTimeout(bctx, 150*time.Second)
	defer cancel()

	base := "http://" + h.HTTPAddr()
	// The first run starts the browser, on a context without a deadline;
	// later runs share it under the test's deadline.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return func(ctx context.Context, tgt *chromedp.Target) (chromedp.Void, error) {
			// Quality 100 makes a PNG; below that, a JPEG.
			png, err := chromedp.FullScreenshot(100)(ctx, tgt)
			if err != nil {
				return chromedp.Void{}, err
			}
			return chromedp.Void{}, os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		}
	}
	// waitJS polls a JavaScript condition; the deadline is the test's
	// patience, not a claim about the hub's speed.
	waitJS := func(cond string) chromedp.Action[chromedp.Void] {
		poll := chromedp.Poll[bool](cond, chromedp.WithPollingTimeout(60*time.Second), chromedp.WithPollingInterval(100*time.Millisecond))
		return func(ctx context.Context, tgt *chromedp.Target) (chromedp.Void, error) {
			_, err := poll(ctx, tgt)
			return chromedp.Void{}, err
		}
	}
	// text reads an element's text in one evaluation, so no live update
	// can come between finding the element and reading it.
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(function (e) { return e ? e.innerText : "(no element " + `+strconv.Quote(sel)+` + ")"; })(document.querySelector(`+strconv.Quote(sel)+`))`))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	// afterNavigation waits until a page replaced the one marked before a
	// form was submitted, and cond holds in it. Evaluations fail while the
	// browser swaps documents; those are retried.
	afterNavigation := func(what, cond string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.readyState === "complete" && !document.body.dataset.before && (`+cond+`)`))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: timed out (last error %v)", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	markBefore := func() chromedp.Action[chromedp.Void] {
		ev := chromedp.Evaluate[bool](`document.body.dataset.before = "1"; true`)
		return func(ctx context.Context, tgt *chromedp.Target) (chromedp.Void, error) {
			_, err := ev(ctx, tgt)
			return chromedp.Void{}, err
		}
	}
	eval := func(expr string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return s
	}

	// Signing in through the form lands on the page asked for.
	run("sign in",
		chromedp.Navigate(base+"/clusters/eu-1"),
		chromedp.WaitVisible(chromedp.ID("#token")),
		shot("login"),
		chromedp.SetValue(chromedp.ID("#token"), token),
		chromedp.Click(chromedp.CSS(`.login button[type="submit"]`)),
	)
	run("after sign-in", chromedp.WaitVisible(chromedp.CSS("dl.facts")))
	if got := text("main"); !strings.Contains(got, "Kubernetes v1.37.2") || !strings.Contains(got, "web") {
		t.Fatalf("cluster page after sign-in:\n%s", got)
	}

	// The overview: counts, a tile per cluster, live.
	run("overview",
		chromedp.Navigate(base+"/"),
		waitJS(`document.querySelector('a.t[href="/clusters/us-1"]') !== null && document.querySelector('a.t[href="/clusters/eu-1"]').title.includes("Healthy")`),
		waitJS(`document.getElementById("live").textContent.includes("Live")`),
		shot("overview"),
	)
	if got := text(".strip"); !strings.Contains(got, "2 ● Online") {
		t.Errorf("summary strip = %q, want 2 online", got)
	}

	// A status change reaches the open page without a reload: a marker
	// set in the page before the change is still there after it.
	eval(`window.droverMarker = "kept"; document.body.dataset.marker = "kept"; "ok"`)
	eu.report("web", commit, droverv1.Health_HEALTH_DEGRADED, "CrashLoopBackOff")
	run("live update",
		waitJS(`document.querySelector('a.t[href="/clusters/eu-1"]').title.includes("Degraded")`),
	)
	if marker := eval(`window.droverMarker + "/" + document.body.dataset.marker`); marker != "kept/kept" {
		t.Fatalf("marker after the update = %q: the page reloaded", marker)
	}
	run("after update", shot("overview-updated"))

	// Filtering by a label selector through the form; the URL keeps it.
	run("filter",
		markBefore(),
		chromedp.SetValue(chromedp.ID("#selector"), "region=us"),
		chromedp.Submit(chromedp.ID("#selector")),
	)
	afterNavigation("filter", `document.querySelector(".tiles") !== null`)
	run("filtered", shot("overview-filtered"))
	if got := eval(`location.search`); !strings.Contains(got, "selector=region%3Dus") {
		t.Errorf("URL after filtering = %q, want the selector in it", got)
	}
	if n := eval(`document.querySelectorAll('a.t[href="/clusters/eu-1"]').length + "/" + document.querySelectorAll('a.t[href="/clusters/us-1"]').length`); n != "0/1" {
		t.Errorf("tiles of eu-1/us-1 with region=us = %s, want 0/1", n)
	}
	run("bad selector",
		markBefore(),
		chromedp.SetValue(chromedp.ID("#selector"), "region in ("),
		chromedp.Submit(chromedp.ID("#selector")),
	)
	afterNavigation("bad selector", `document.querySelector("p.error") !== null`)
	run("bad selector shown", shot("overview-bad-selector"))
	if got := text("p.error"); !strings.Contains(got, "label selector") {
		t.Errorf("bad selector message = %q", got)
	}

	// The cluster page: expand the resources, then a change arrives and
	// the expanded row stays open.
	run("cluster page",
		chromedp.Navigate(base+"/clusters/eu-1"),
		chromedp.WaitVisible(chromedp.CSS("#res-web summary")),
		chromedp.Click(chromedp.CSS("#res-web summary")),
		chromedp.WaitVisible(chromedp.CSS("#res-web table")),
		waitJS(`document.getElementById("live").textContent.includes("Live")`),
	)
	eu.report("web", commit, droverv1.Health_HEALTH_HEALTHY, "recovered")
	run("cluster page update",
		waitJS(`document.querySelector("main").textContent.includes("recovered")`),
		waitJS(`document.getElementById("res-web").open === true`),
		shot("cluster"),
	)

	run("application page",
		chromedp.Navigate(base+"/apps/web"),
		chromedp.WaitVisible(chromedp.CSS("dd.rollout")),
		shot("application"),
	)
	if got := text("main"); !strings.Contains(got, "Rollout: all at once (no strategy)") || !strings.Contains(got, "us-1") || !strings.Contains(got, commit[:10]) {
		t.Errorf("application page:\n%s", got)
	}

	run("events page",
		chromedp.Navigate(base+"/events?cluster=eu-1"),
		chromedp.WaitVisible(chromedp.CSS("table.grid")),
		shot("events"),
	)
	if got := text("main"); !strings.Contains(got, "cluster.registered") {
		t.Errorf("events page:\n%s", got)
	}

	run("not found",
		chromedp.Navigate(base+"/apps/nope"),
		chromedp.WaitVisible(chromedp.CSS("p.error")),
	)
	if got := text("p.error"); !strings.Contains(got, "does not exist") {
		t.Errorf("404 page = %q", got)
	}

	// A rollout: a canary wave, then a main wave behind an approval. The
	// test agents ACK every assignment; they report Synced and Healthy
	// when the test says so.
	c1 := repo.Commit(t, "shop v1", map[string]string{"shop/deploy.yaml": "kind: ConfigMap\n"})
	canary := startAgent(t, h, join(map[string]string{"app": "shop", "ring": "canary"}), "canary-1")
	mainA := startAgent(t, h, join(map[string]string{"app": "shop", "ring": "main"}), "main-1")
	shop := app("shop", repo.URL, "shop", map[string]string{"app": "shop"})
	shop.Spec.Rollout = &droverv1.RolloutStrategy{Waves: []*droverv1.RolloutWave{
		{Name: "canary", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "canary"}}},
		{Name: "main", Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"ring": "main"}}, RequireApproval: true},
	}}
	shopJSON, _ := protojson.Marshal(shop)
	apiPost(t, h, token, "/api/v1/applications", shopJSON)
	// The first release goes everywhere at once.
	canary.waitForCommit("shop", c1)
	mainA.waitForCommit("shop", c1)
	canary.report("shop", c1, droverv1.Health_HEALTH_HEALTHY, "ready")
	mainA.report("shop", c1, droverv1.Health_HEALTH_HEALTHY, "ready")
	waitRollout(t, h, token, "completed")
	c2 := repo.Commit(t, "shop v2", map[string]string{"shop/deploy.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	apiPost(t, h, token, "/api/v1/applications/shop/refresh", nil)
	canary.waitForCommit("shop", c2)
	canary.report("shop", c2, droverv1.Health_HEALTH_HEALTHY, "ready")
	waitRollout(t, h, token, "waiting-approval")

	// The gate is the loudest thing on the overview, and links to the
	// application.
	run("overview with a gate",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(".banner.gate")),
		waitJS(`document.getElementById("live").textContent.includes("Live")`),
		shot("overview-rollout-waiting"),
	)
	if got := text(".banner.gate"); !strings.Contains(got, "Approval needed") || !strings.Contains(got, "Waiting for approval of wave main") {
		t.Errorf("overview banner = %q", got)
	}

	// A live update changes only what changed: the link the user points
	// at and has focused, and the tile whose state changes while a new
	// cluster's tile lands ahead of it, stay the same elements, so a click
	// or a key press lands where the user meant.
	const bannerLink = `document.querySelector('.banner.gate a[href="/apps/shop"]')`
	const euTile = `document.querySelector('a.t[href="/clusters/eu-1"]')`
	eval(`window.__kept = ` + bannerLink + `; window.__kept.focus(); window.__tile = ` + euTile + `; "ok"`)
	eu.report("web", commit, droverv1.Health_HEALTH_DEGRADED, "OOMKilled")
	startAgent(t, h, join(map[string]string{"env": "dev"}), "ab-1")
	run("live update beside the focused link",
		waitJS(euTile+`.title.includes("Degraded") && document.querySelector('a.t[href="/clusters/ab-1"]') !== null`),
	)
	kept := eval(`[
		"link connected " + window.__kept.isConnected,
		"link same " + (window.__kept === ` + bannerLink + `),
		"link focused " + (document.activeElement === window.__kept),
		"tile same " + (window.__tile === ` + euTile + `),
	].join(", ")`)
	if want := "link connected true, link same true, link focused true, tile same true"; kept != want {
		t.Fatalf("after a live update: %s; want %s (the update replaced elements, or reused them for others, instead of changing them in place)", kept, want)
	}

	// Following the banner's link opens the application, whatever live
	// updates arrive meanwhile.
	run("rollout waiting",
		markBefore(),
		chromedp.Click(chromedp.CSS(`.banner.gate a[href="/apps/shop"]`)),
	)
	afterNavigation("rollout waiting", `location.pathname === "/apps/shop" && document.getElementById("promote") !== null`)
	run("application with a gate",
		waitJS(`document.getElementById("live").textContent.includes("Live")`),
		shot("application-rollout-waiting"),
	)
	if got := text("#ro-waiting"); !strings.Contains(got, "Waiting for approval of wave main") {
		t.Fatalf("rollout sentence = %q, want waiting for approval of wave main", got)
	}
	eval(`window.droverMarker = "kept"; "ok"`)
	run("promote",
		chromedp.Click(chromedp.ID("#promote")),
		waitJS(`document.querySelector(".gate.approved") !== null && !document.getElementById("ro-waiting").textContent.includes("approval")`),
		shot("application-rollout-promoted"),
	)
	if marker := eval(`String(window.droverMarker)`); marker != "kept" {
		t.Fatalf("marker after promote = %q: the page reloaded", marker)
	}
	// The main wave gets the release; once it is healthy there the page
	// shows the rollout completed, still without a reload.
	mainA.waitForCommit("shop", c2)
	mainA.report("shop", c2, droverv1.Health_HEALTH_HEALTHY, "ready")
	waitRollout(t, h, token, "completed")
	run("rollout completed",
		waitJS(`document.querySelector("#ro-h").textContent.includes("Completed")`),
		shot("application-rollout-completed"),
	)
	if marker := eval(`String(window.droverMarker)`); marker != "kept" {
		t.Fatalf("marker after the rollout completed = %q: the page reloaded", marker)
	}

	// The replicas page: a row per replica with the agent streams it
	// holds. hub-b joins with an agent of its own.
	cfgB := cfg
	cfgB.DataDir = filepath.Join(dir, "data-b")
	cfgB.Replica, cfgB.PeerAddr, cfgB.Peers = "hub-b", peerB, []string{peerA}
	hb, err := server.Start(context.Background(), cfgB, testlog.New(t).With("hub", "hub-b"), io.Discard)
	must(t, err)
	t.Cleanup(func() { hb.Close() })
	startAgent(t, hb, join(nil), "b-1")
	const rowA, rowB = `document.querySelector('tr[data-key="rep-hub-a"]')`, `document.querySelector('tr[data-key="rep-hub-b"]')`
	// eu-1, us-1, canary-1, main-1 and ab-1 stream to hub-a.
	run("replicas page",
		chromedp.Navigate(base+"/replicas"),
		waitJS(rowA+` !== null && `+rowB+` !== null && `+rowA+`.querySelector(".streams").textContent === "5" && `+rowB+`.querySelector(".streams").textContent === "1"`+
			` && `+rowA+`.textContent.includes("Alive") && `+rowB+`.textContent.includes("Alive")`),
		waitJS(`document.getElementById("live").textContent.includes("Live")`),
		shot("replicas"),
	)
	if n := eval(`String(document.querySelectorAll("#replicas tbody tr").length)`); n != "2" {
		t.Errorf("replica rows = %s, want 2", n)
	}
	// Another agent on hub-a: its row counts it without a reload, and
	// stays the same element.
	eval(`window.__row = ` + rowA + `; window.droverMarker = "kept"; "ok"`)
	startAgent(t, h, join(map[string]string{"env": "dev"}), "ab-2")
	run("replicas live update", waitJS(rowA+`.querySelector(".streams").textContent === "6"`))
	if kept := eval(`String(window.__row === ` + rowA + `) + "/" + window.droverMarker`); kept != "true/kept" {
		t.Fatalf("after a live update: row same / marker = %s, want true/kept", kept)
	}
	// A replica's page lists the clusters whose streams it holds.
	run("replica page", markBefore(), chromedp.Click(chromedp.CSS(`a[href="/replicas/hub-b"]`)))
	afterNavigation("replica page", `location.pathname === "/replicas/hub-b" && document.querySelector('ul.streams a[href="/clusters/b-1"]') !== null`)
	run("replica page shown", shot("replica"))
	run("overview with replicas",
		chromedp.Navigate(base+"/"),
		waitJS(`document.getElementById("replica-count") !== null`),
	)
	if got := text("#replica-count"); got != "2/2 hub replicas alive" {
		t.Errorf("overview replica count = %q, want 2/2 hub replicas alive", got)
	}

	// A phone-sized window renders the overview too.
	run("phone",
		chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS(".tiles")),
		shot("overview-phone"),
	)
	entries, err := os.ReadDir(shots)
	must(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	t.Log(fmt.Sprintf("screenshots: %s/{%s}", shots, strings.Join(names, ",")))
}
