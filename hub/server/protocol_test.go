package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func webApp(name, repoURL string, selector map[string]string) *droverv1.Application {
	return &droverv1.Application{Name: name, Spec: &droverv1.ApplicationSpec{
		Source:     &droverv1.Source{RepoUrl: repoURL, Ref: "main", Path: "web"},
		Placement:  &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: selector}},
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
	}}
}

func appNames(a *droverv1.Assignment) []string {
	var out []string
	for _, x := range a.GetApplications() {
		out = append(out, x.GetName()+"@"+x.GetCommit())
	}
	return out
}

// TestAssignmentProtocol follows one agent through registration, its
// assignment changing with applications, commits and labels, status
// reports, and a reconnect that resends nothing.
func TestAssignmentProtocol(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "web v1", map[string]string{"web/deploy.yaml": "kind: ConfigMap\n"})
	h := startHub(t)

	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"env": "prod"}})
	east := h.mustRegister(t, tok, "east")
	s := east.connect(t, "")

	// A new cluster's first assignment is empty.
	first := s.nextAssignment(t)
	if len(first.GetApplications()) != 0 {
		t.Fatalf("first assignment = %v, want empty", appNames(first))
	}
	s.ack(t, first, "")

	// An application placed by label arrives pinned to the resolved commit.
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"env": "prod"}), nil)
	a1 := s.nextAssignment(t)
	if got := appNames(a1); len(got) != 1 || got[0] != "web@"+c1 {
		t.Fatalf("assignment = %v, want [web@%s]", got, c1)
	}
	if a1.GetVersion() == first.GetVersion() {
		t.Fatal("assignment version did not change with its content")
	}
	s.ack(t, a1, "")
	eventually(t, "the ACK recorded", func() bool {
		var c droverv1.GetClusterResponse
		h.mustAPI(t, "GET", "/api/v1/clusters/east", nil, &c)
		return c.GetCluster().GetAckedVersion() == a1.GetVersion()
	})

	// Status for the assigned application is stored; one for an
	// application the cluster does not run is dropped.
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{
		{Application: "web", Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY,
			Resources:  []*droverv1.ResourceStatus{{Kind: "ConfigMap", Namespace: "default", Name: "web", Health: droverv1.Health_HEALTH_HEALTHY}},
			ObservedAt: timestamppb.Now()},
		{Application: "not-mine", Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED, Health: droverv1.Health_HEALTH_HEALTHY},
	}}}})
	eventually(t, "the status stored", func() bool {
		_ = h.FlushStatuses(context.Background())
		var app droverv1.GetApplicationResponse
		h.mustAPI(t, "GET", "/api/v1/applications/web", nil, &app)
		return len(app.GetStatuses()) == 1 && app.GetStatuses()[0].GetHealth() == droverv1.Health_HEALTH_HEALTHY &&
			len(app.GetStatuses()[0].GetResources()) == 1
	})
	var cl droverv1.GetClusterResponse
	h.mustAPI(t, "GET", "/api/v1/clusters/east", nil, &cl)
	for _, st := range cl.GetApplications() {
		if st.GetApplication() == "not-mine" {
			t.Fatal("a status for an application not assigned to the cluster was stored")
		}
	}
	if !cl.GetCluster().GetOnline() || cl.GetCluster().GetFacts().GetNodeCount() != 3 {
		t.Fatalf("cluster = online %v facts %v, want online with 3 nodes", cl.GetCluster().GetOnline(), cl.GetCluster().GetFacts())
	}

	// A new commit becomes a new release and a new assignment.
	c2 := repo.Commit(t, "web v2", map[string]string{"web/deploy.yaml": "kind: ConfigMap\nmetadata: {name: v2}\n"})
	var ref droverv1.RefreshApplicationResponse
	h.mustAPI(t, "POST", "/api/v1/applications/web/refresh", nil, &ref)
	if ref.GetCommit() != c2 || !ref.GetNewRelease() {
		t.Fatalf("refresh = %v, want new release %s", &ref, c2)
	}
	a2 := s.nextAssignment(t)
	if got := appNames(a2); len(got) != 1 || got[0] != "web@"+c2 {
		t.Fatalf("assignment after commit = %v, want [web@%s]", got, c2)
	}
	s.ack(t, a2, "")

	// A reconnect that says it has the current version gets nothing:
	// the first assignment on the new stream is the next change's. The
	// hub answers at once with a ping, so the agent knows it is admitted.
	s.cancel()
	s2 := east.connect(t, a2.GetVersion())
	if m := s2.next(t, "the first message", func(*droverv1.HubMessage) bool { return true }); m.GetPing() == nil {
		t.Fatalf("the reconnect that has version %s was first sent %v; want a ping", a2.GetVersion(), m)
	}

	// Relabelling the cluster away from the placement removes the
	// application from its next assignment.
	h.mustAPI(t, "PATCH", "/api/v1/clusters/east/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "staging"}}, nil)
	a3 := s2.nextAssignment(t)
	if a3.GetVersion() == a2.GetVersion() {
		t.Fatalf("the reconnect was sent version %s, which it said it had", a2.GetVersion())
	}
	if len(a3.GetApplications()) != 0 {
		t.Fatalf("assignment after relabel = %v, want empty", appNames(a3))
	}
	// And back: it returns at the current release.
	h.mustAPI(t, "PATCH", "/api/v1/clusters/east/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"env": "prod"}}, nil)
	if got := appNames(s2.nextAssignment(t)); len(got) != 1 || got[0] != "web@"+c2 {
		t.Fatalf("assignment after relabel back = %v, want [web@%s]", got, c2)
	}

	// A NACK is recorded with its reason and the version is not resent.
	h.mustAPI(t, "DELETE", "/api/v1/applications/web", nil, nil)
	a4 := s2.nextAssignment(t)
	s2.ack(t, a4, "cannot parse the assignment")
	eventually(t, "the NACK recorded", func() bool {
		var c droverv1.GetClusterResponse
		h.mustAPI(t, "GET", "/api/v1/clusters/east", nil, &c)
		return c.GetCluster().GetNackError() == "cannot parse the assignment"
	})
	// The next assignment the agent gets is the next change's.
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"env": "prod"}), nil)
	a5 := s2.nextAssignment(t)
	if a5.GetVersion() == a4.GetVersion() {
		t.Fatalf("the rejected version %s was sent again", a4.GetVersion())
	}
	if got := appNames(a5); len(got) != 1 || got[0] != "web@"+c2 {
		t.Fatalf("assignment after the NACK = %v, want [web@%s]", got, c2)
	}
}

// TestSecondStreamReplacesFirst checks that a cluster has one live stream.
func TestSecondStreamReplacesFirst(t *testing.T) {
	h := startHub(t)
	a := h.mustRegister(t, h.joinToken(t, &droverv1.CreateJoinTokenRequest{}), "west")
	s1 := a.connect(t, "")
	s1.nextAssignment(t)
	s2 := a.connect(t, "")
	s2.nextAssignment(t)
	select {
	case err := <-s1.errc:
		if status.Code(err) != codes.Aborted {
			t.Fatalf("first stream ended with %v, want Aborted", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first stream was not closed")
	}
}

// TestRegistrationRefusals refuses registrations with a spent, expired,
// unknown or wrong token, and malformed ones, and audits each refusal that
// got as far as checking the token or the CSR: exactly one entry each,
// without the token.
func TestRegistrationRefusals(t *testing.T) {
	h := startHub(t)
	single := h.joinToken(t, &droverv1.CreateJoinTokenRequest{})
	h.mustRegister(t, single, "first")
	var expiring droverv1.CreateJoinTokenResponse
	h.mustAPI(t, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Ttl: "1ms"}, &expiring)
	// The hub holds a token expired once its clock, which is this
	// process's, reaches the stored expiry (microseconds in PostgreSQL, so
	// up to half a microsecond later than the one returned).
	expiresAt := expiring.GetJoinToken().GetExpiresAt().AsTime().Add(time.Microsecond)
	for now := time.Now(); now.Before(expiresAt); now = time.Now() {
		time.Sleep(expiresAt.Sub(now))
	}
	id := strings.SplitN(single, ".", 2)[0]

	refusals := func(t *testing.T) []*droverv1.Event {
		t.Helper()
		var evs droverv1.ListEventsResponse
		h.mustAPI(t, "GET", "/api/v1/events?kind=cluster.register_refused", nil, &evs)
		return evs.GetEvents()
	}
	// audited says what the refusal's audit entry tells; empty for a
	// request refused as malformed before any token or CSR is looked at.
	for _, tc := range []struct {
		name, token, cluster string
		code                 codes.Code
		audited              string
	}{
		{"used single-use token", single, "second", codes.PermissionDenied, "join token refused"},
		{"expired token", expiring.GetToken(), "second", codes.PermissionDenied, "join token refused"},
		{"unknown token", "abcdefgh.ijklmnopqrstuvwxyzabcdefghijklmn", "second", codes.PermissionDenied, "join token refused"},
		{"wrong secret", id + ".ijklmnopqrstuvwxyzabcdefghijklmn", "second", codes.PermissionDenied, "join token refused"},
		{"malformed token", "not a token", "second", codes.PermissionDenied, "join token refused"},
		{"empty token", "", "second", codes.InvalidArgument, ""},
		{"invalid cluster name", single, "Not_A_Name", codes.InvalidArgument, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(refusals(t))
			_, err := h.register(t, tc.token, tc.cluster)
			if status.Code(err) != tc.code {
				t.Fatalf("register = %v, want %v", err, tc.code)
			}
			checkRefusalAudit(t, refusals(t), before, tc.cluster, tc.audited)
		})
	}
	t.Run("CSR names another cluster", func(t *testing.T) {
		tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Reusable: true})
		_, csr := newCSR(t, "someone-else")
		before := len(refusals(t))
		_, err := h.agentConn(t, h.serverTLS()).Register(context.Background(), &droverv1.RegisterRequest{JoinToken: tok, ClusterName: "second", CsrPem: csr})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("register = %v, want InvalidArgument", err)
		}
		checkRefusalAudit(t, refusals(t), before, "second", "certificate request refused")
	})

	var list droverv1.ListClustersResponse
	h.mustAPI(t, "GET", "/api/v1/clusters", nil, &list)
	if n := len(list.GetClusters()); n != 1 {
		t.Fatalf("%d clusters registered, want only the first", n)
	}
	evs := refusals(t)
	if len(evs) != 6 {
		t.Fatalf("%d refusal audit entries, want 6: one per refused token or CSR", len(evs))
	}
	for _, e := range evs {
		if strings.Contains(e.GetMessage(), single) || strings.Contains(e.GetMessage(), expiring.GetToken()) {
			t.Fatalf("an audit entry holds the token: %q", e.GetMessage())
		}
	}
}

// checkRefusalAudit fails t unless the refusal just made added exactly one
// audit entry for cluster saying what, or none when what is empty. evs are
// the refusal entries now, before their number before the refusal.
func checkRefusalAudit(t *testing.T, evs []*droverv1.Event, before int, cluster, what string) {
	t.Helper()
	want := 1
	if what == "" {
		want = 0
	}
	if got := len(evs) - before; got != want {
		t.Fatalf("the refusal added %d audit entries, want %d", got, want)
	}
	if want == 0 {
		return
	}
	var latest *droverv1.Event
	for _, e := range evs {
		if latest == nil || e.GetTime().AsTime().After(latest.GetTime().AsTime()) {
			latest = e
		}
	}
	if latest.GetCluster() != cluster || !strings.Contains(latest.GetMessage(), what) {
		t.Fatalf("audit entry = cluster %q %q, want cluster %q saying %q", latest.GetCluster(), latest.GetMessage(), cluster, what)
	}
}

func TestConnectRefusals(t *testing.T) {
	h := startHub(t)
	a := h.mustRegister(t, h.joinToken(t, &droverv1.CreateJoinTokenRequest{}), "edge")

	t.Run("no client certificate", func(t *testing.T) {
		s, err := h.agentConn(t, h.serverTLS()).Connect(context.Background())
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("connect = %v, want Unauthenticated", err)
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		tc := a.tlsConfig()
		tc.Certificates = []tls.Certificate{foreignCert(t, "edge")}
		s, err := h.agentConn(t, tc).Connect(context.Background())
		if err == nil {
			_, err = s.Recv()
		}
		if err == nil || status.Code(err) == codes.OK {
			t.Fatal("a certificate from another CA was accepted")
		}
	})
	t.Run("revoked certificate", func(t *testing.T) {
		s := a.connect(t, "")
		s.nextAssignment(t)
		h.mustAPI(t, "POST", "/api/v1/clusters/edge/revoke", nil, nil)
		select {
		case err := <-s.errc:
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("live stream ended with %v, want PermissionDenied", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the live stream of a revoked cluster stayed open")
		}
		s2, err := h.agentConn(t, a.tlsConfig()).Connect(context.Background())
		if err == nil {
			_, err = s2.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("reconnect after revoke = %v, want PermissionDenied", err)
		}
	})
}

// foreignCert is a client certificate for name from a CA the hub does not
// know.
func foreignCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rogue CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name, Organization: []string{"drover:clusters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	c, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStatusIsBoundToTheCertificate checks that a cluster's stored
// statuses are exactly what its own agent sent: another cluster's agent
// cannot write them, whatever cluster its report names, and a status with
// an enum value from a newer agent is refused rather than stored.
func TestStatusIsBoundToTheCertificate(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Reusable: true, Labels: map[string]string{"fleet": "all"}})
	a := h.mustRegister(t, tok, "a")
	b := h.mustRegister(t, tok, "b")
	h.mustAPI(t, "PATCH", "/api/v1/clusters/b/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"team": "b"}}, nil)
	// "shared" runs on both clusters, so a's reports about it pass the
	// assignment check and only the certificate binds them to a.
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("shared", repo.URL, map[string]string{"fleet": "all"}), nil)
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("only-b", repo.URL, map[string]string{"team": "b"}), nil)
	sa := a.connect(t, "")
	sa.awaitApplications(t, "shared@"+c1)
	sb := b.connect(t, "")
	sb.awaitApplications(t, "only-b@"+c1, "shared@"+c1)

	observed := timestamppb.New(time.Now().Truncate(time.Microsecond))
	appStatus := func(cluster, app string, sync droverv1.SyncState, health droverv1.Health, msg string) *droverv1.ApplicationStatus {
		return &droverv1.ApplicationStatus{Cluster: cluster, Application: app, Commit: c1, Sync: sync, Health: health, Message: msg,
			Resources:  []*droverv1.ResourceStatus{{Kind: "ConfigMap", Namespace: "default", Name: app, Health: health}},
			ObservedAt: observed}
	}
	synced, healthy := droverv1.SyncState_SYNC_STATE_SYNCED, droverv1.Health_HEALTH_HEALTHY
	bOnly := appStatus("", "only-b", synced, healthy, "b: only-b")
	bShared := appStatus("", "shared", synced, healthy, "b: shared")
	sb.sendStatuses(t, bOnly, bShared)
	h.awaitStatus(t, "b", "shared", "b: shared")

	// A newer agent's enum values are refused status by status; the
	// report's last status, valid, is stored.
	futureHealth := appStatus("", "only-b", synced, droverv1.Health(42), "b: health from the future")
	futureHealth.Resources[0].Health = healthy // only the status's own health is new
	futureResource := appStatus("", "only-b", synced, healthy, "b: resource health from the future")
	futureResource.Resources[0].Health = droverv1.Health(42)
	bShared = appStatus("", "shared", synced, droverv1.Health_HEALTH_PROGRESSING, "b: shared, after the future")
	sb.sendStatuses(t,
		appStatus("", "only-b", droverv1.SyncState(42), healthy, "b: sync from the future"),
		futureHealth,
		futureResource,
		bShared)
	h.awaitStatus(t, "b", "shared", "b: shared, after the future")
	h.checkStatuses(t, "b", bOnly, bShared)

	// A commit that is neither a commit SHA nor a chart's or artifact's
	// revision is refused the same way.
	badCommit := appStatus("", "only-b", synced, healthy, "b: commit of no kind")
	badCommit.Commit = "main"
	bShared = appStatus("", "shared", synced, healthy, "b: shared, after a bad commit")
	sb.sendStatuses(t, badCommit, bShared)
	h.awaitStatus(t, "b", "shared", "b: shared, after a bad commit")
	h.checkStatuses(t, "b", bOnly, bShared)

	// b is silent from here on: whatever its statuses are now, it did not
	// send. a's report names b; the hub ignores that and takes a's
	// certificate's name, so only-b, which a does not run, is dropped,
	// and shared is a's own.
	sa.sendStatuses(t,
		appStatus("b", "only-b", droverv1.SyncState_SYNC_STATE_FAILED, droverv1.Health_HEALTH_DEGRADED, "a: forged only-b"),
		appStatus("b", "shared", droverv1.SyncState_SYNC_STATE_FAILED, droverv1.Health_HEALTH_DEGRADED, "a: forged shared"))
	// a's next report is handled after that one on the same stream.
	aShared := appStatus("", "shared", synced, healthy, "a: shared")
	sa.sendStatuses(t, aShared)
	h.awaitStatus(t, "a", "shared", "a: shared")
	h.checkStatuses(t, "b", bOnly, bShared)
	h.checkStatuses(t, "a", aShared)
}

// awaitApplications ACKs assignments until one holds exactly apps
// (name@commit, sorted).
func (s *stream) awaitApplications(t *testing.T, apps ...string) {
	t.Helper()
	for {
		a := s.nextAssignment(t)
		s.ack(t, a, "")
		got := appNames(a)
		slices.Sort(got)
		if slices.Equal(got, apps) {
			return
		}
	}
}

func (s *stream) sendStatuses(t *testing.T, sts ...*droverv1.ApplicationStatus) {
	t.Helper()
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: sts}}})
}

// clusterStatuses returns the statuses the hub has stored for cluster, by
// application, after writing what it holds.
func (h *testHub) clusterStatuses(t *testing.T, cluster string) []*droverv1.ApplicationStatus {
	t.Helper()
	if err := h.FlushStatuses(context.Background()); err != nil {
		t.Fatalf("flush statuses: %v", err)
	}
	var cl droverv1.GetClusterResponse
	h.mustAPI(t, "GET", "/api/v1/clusters/"+cluster, nil, &cl)
	sts := cl.GetApplications()
	slices.SortFunc(sts, func(x, y *droverv1.ApplicationStatus) int {
		return strings.Compare(x.GetApplication(), y.GetApplication())
	})
	return sts
}

// awaitStatus waits until cluster's stored status of app has message msg.
func (h *testHub) awaitStatus(t *testing.T, cluster, app, msg string) {
	t.Helper()
	eventually(t, cluster+"'s status of "+app+" saying "+msg, func() bool {
		for _, st := range h.clusterStatuses(t, cluster) {
			if st.GetApplication() == app {
				return st.GetMessage() == msg
			}
		}
		return false
	})
}

// checkStatuses fails t unless cluster's stored statuses are exactly
// want, sorted by application, with the cluster named by the hub.
func (h *testHub) checkStatuses(t *testing.T, cluster string, want ...*droverv1.ApplicationStatus) {
	t.Helper()
	got := h.clusterStatuses(t, cluster)
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		w := proto.CloneOf(want[i])
		w.Cluster = cluster
		ok = proto.Equal(got[i], w)
	}
	if !ok {
		t.Fatalf("cluster %s's stored statuses:\n%v\nwant exactly (what its own agent sent about its own applications):\n%v", cluster, got, want)
	}
}

func TestAdminAPIAuth(t *testing.T) {
	h := startHub(t)
	var viewer droverv1.CreateAPITokenResponse
	h.mustAPI(t, "POST", "/api/v1/api-tokens", &droverv1.CreateAPITokenRequest{Name: "dash", Role: "viewer"}, &viewer)

	if code, _ := h.api(t, "", "GET", "/api/v1/clusters", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: HTTP %d, want 401", code)
	}
	if code, _ := h.api(t, "bogus.token", "GET", "/api/v1/clusters", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("bad token: HTTP %d, want 401", code)
	}
	if code, _ := h.api(t, viewer.GetToken(), "GET", "/api/v1/clusters", nil, nil); code != http.StatusOK {
		t.Fatalf("viewer read: HTTP %d, want 200", code)
	}
	if code, _ := h.api(t, viewer.GetToken(), "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{}, nil); code != http.StatusForbidden {
		t.Fatalf("viewer change: HTTP %d, want 403", code)
	}
	var list droverv1.ListAPITokensResponse
	h.mustAPI(t, "GET", "/api/v1/api-tokens", nil, &list)
	for _, tk := range list.GetApiTokens() {
		if strings.Contains(tk.String(), viewer.GetToken()) {
			t.Fatal("listing API tokens returned a secret")
		}
	}
}

func TestApplicationValidation(t *testing.T) {
	// The hub resolves a new application's ref at once: the repository is
	// the test bed's, on loopback.
	repo := testbed.GitServer(t).CreateRepo(t, "fleet")
	repo.Commit(t, "web", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)
	good := webApp("web", repo.URL, map[string]string{"env": "prod"})
	h.mustAPI(t, "POST", "/api/v1/applications", good, nil)

	for _, tc := range []struct {
		name, field string
		mutate      func(a *droverv1.Application)
	}{
		{"missing repo", "repoURL", func(a *droverv1.Application) { a.Spec.Source.RepoUrl = "" }},
		{"file scheme", "repoURL", func(a *droverv1.Application) { a.Spec.Source.RepoUrl = "file:///etc" }},
		{"path escapes", "path", func(a *droverv1.Application) { a.Spec.Source.Path = "../../etc" }},
		{"absolute path", "path", func(a *droverv1.Application) { a.Spec.Source.Path = "/etc" }},
		{"unknown render", "render.type", func(a *droverv1.Application) { a.Spec.Render = &droverv1.Render{Type: "jsonnet"} }},
		{"bad selector", "matchExpressions", func(a *droverv1.Application) {
			a.Spec.Placement.Selector.MatchExpressions = []*droverv1.LabelSelectorRequirement{{Key: "env", Operator: "Near"}}
		}},
		{"oversized", "", func(a *droverv1.Application) { a.Spec.Source.ExtraPaths = []string{strings.Repeat("x", 300<<10)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := webApp("other", good.Spec.Source.RepoUrl, map[string]string{"env": "prod"})
			tc.mutate(a)
			code, body := h.api(t, h.token, "POST", "/api/v1/applications", a, nil)
			if code != http.StatusBadRequest || !strings.Contains(body, tc.field) {
				t.Fatalf("HTTP %d %s, want 400 naming %q", code, body, tc.field)
			}
		})
	}
	if code, _ := h.api(t, h.token, "POST", "/api/v1/applications", good, nil); code != http.StatusConflict {
		t.Fatalf("duplicate: HTTP %d, want 409", code)
	}
	var list droverv1.ListApplicationsResponse
	h.mustAPI(t, "GET", "/api/v1/applications", nil, &list)
	if len(list.GetApplications()) != 1 {
		t.Fatalf("%d applications stored, want 1", len(list.GetApplications()))
	}
}

func TestOversizedMessageIsRefused(t *testing.T) {
	h := startHub(t)
	a := h.mustRegister(t, h.joinToken(t, &droverv1.CreateJoinTokenRequest{}), "big")
	s := a.connect(t, "")
	s.nextAssignment(t)
	huge := strings.Repeat("x", 5<<20)
	_ = s.s.Send(&droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: &droverv1.StatusReport{Applications: []*droverv1.ApplicationStatus{{Application: "x", Message: huge}}}}})
	select {
	case err := <-s.errc:
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("stream ended with %v, want ResourceExhausted", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an oversized message did not end the stream")
	}
	// The hub carries on: the agent reconnects and is served.
	a.connect(t, "").nextAssignment(t)
}

func TestUnreachableDatabaseAtStart(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.DatabaseURL = "postgres://drover:secret@" + testbed.FreeAddr(t) + "/drover?connect_timeout=2"
	cfg.AgentAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	_, err := server.Start(context.Background(), cfg, testlog.New(t), io.Discard)
	if err == nil {
		t.Fatal("the hub started without its database")
	}
	if !strings.Contains(err.Error(), "database") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %q should say the database is the problem and hide the password", err)
	}
}

// sendReport sends one status report.
func (s *stream) sendReport(t *testing.T, rep *droverv1.StatusReport) {
	t.Helper()
	s.send(t, &droverv1.AgentMessage{Kind: &droverv1.AgentMessage_Status{Status: rep}})
}

// An application relabelled away from a cluster stays in the cluster's
// statuses, marked removing and counted nowhere, until the agent says it
// removed it; then it is gone. The agent's word is taken only for
// applications not assigned to the cluster, a bad name is refused without
// ending the stream, and an agent that may have forgotten a removal (a
// new session while one is awaited) is asked for a full report, which
// deletes nothing still assigned.
func TestRemovedApplicationStatuses(t *testing.T) {
	git := testbed.GitServer(t)
	repo := git.CreateRepo(t, "fleet")
	c1 := repo.Commit(t, "v1", map[string]string{"web/a.yaml": "kind: ConfigMap\n"})
	h := startHub(t)
	tok := h.joinToken(t, &droverv1.CreateJoinTokenRequest{Labels: map[string]string{"fleet": "all", "tier": "x"}})
	a := h.mustRegister(t, tok, "a")
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("web", repo.URL, map[string]string{"fleet": "all"}), nil)
	h.mustAPI(t, "POST", "/api/v1/applications", webApp("old", repo.URL, map[string]string{"tier": "x"}), nil)
	s := a.connect(t, "")
	s.awaitApplications(t, "old@"+c1, "web@"+c1)

	status := func(app, msg string) *droverv1.ApplicationStatus {
		return &droverv1.ApplicationStatus{Application: app, Commit: c1, Sync: droverv1.SyncState_SYNC_STATE_SYNCED,
			Health: droverv1.Health_HEALTH_HEALTHY, Message: msg, ObservedAt: timestamppb.New(time.Now().Truncate(time.Microsecond))}
	}
	oldSt, webSt := status("old", "old runs"), status("web", "web runs")
	s.sendStatuses(t, oldSt, webSt)
	h.awaitStatus(t, "a", "web", "web runs")

	healthyOn := func(app string) float64 {
		return value(h.scrape(t), "drover_application_clusters_by_health", map[string]string{"application": app, "health": "healthy"})
	}
	counted := func() int32 {
		var list droverv1.ListClustersResponse
		h.mustAPI(t, "GET", "/api/v1/clusters", nil, &list)
		return list.GetClusters()[0].GetHealthCounts()["Healthy"]
	}
	if n, m := counted(), healthyOn("old"); n != 2 || m != 1 {
		t.Fatalf("before the relabel: a counts %d healthy, old healthy on %v clusters; want 2 and 1", n, m)
	}

	h.mustAPI(t, "PATCH", "/api/v1/clusters/a/labels", &droverv1.UpdateClusterLabelsRequest{Remove: []string{"tier"}}, nil)
	s.awaitApplications(t, "web@"+c1)
	removing := proto.CloneOf(oldSt)
	removing.Removing = true
	h.checkStatuses(t, "a", removing, webSt)
	if n, m := counted(), healthyOn("old"); n != 1 || m != -1 {
		t.Fatalf("while old is being removed: a counts %d healthy, old healthy on %v clusters; want 1 and none", n, m)
	}

	// web is assigned: the agent's word about it is wrong and ignored. A
	// bad name is refused alone; old goes.
	s.sendReport(t, &droverv1.StatusReport{Removed: []string{"web", "Not_A..Name", strings.Repeat("x", 300), "old"}})
	webSt = status("web", "web after the removal")
	s.sendStatuses(t, webSt)
	h.awaitStatus(t, "a", "web", "web after the removal")
	h.checkStatuses(t, "a", webSt)

	// Placed again: a late word of its removal does not delete its new
	// status.
	h.mustAPI(t, "PATCH", "/api/v1/clusters/a/labels", &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{"tier": "x"}}, nil)
	s.awaitApplications(t, "old@"+c1, "web@"+c1)
	oldSt = status("old", "old runs again")
	s.sendStatuses(t, oldSt)
	s.sendReport(t, &droverv1.StatusReport{Removed: []string{"old"}})
	webSt = status("web", "web after the late removal")
	s.sendStatuses(t, webSt)
	h.awaitStatus(t, "a", "web", "web after the late removal")
	h.checkStatuses(t, "a", oldSt, webSt)

	// Removed again, and the agent's word lost with its session: the new
	// session is asked for a full report. It lists nothing (the agent has
	// reconciled nothing since it started), which deletes old but not
	// web, still assigned.
	h.mustAPI(t, "PATCH", "/api/v1/clusters/a/labels", &droverv1.UpdateClusterLabelsRequest{Remove: []string{"tier"}}, nil)
	s.awaitApplications(t, "web@"+c1)
	removing = proto.CloneOf(oldSt)
	removing.Removing = true
	h.checkStatuses(t, "a", removing, webSt)
	s.cancel()
	s = a.connect(t, "")
	if c := s.nextCommand(t); c.GetType() != droverv1.CommandType_COMMAND_TYPE_RESYNC_STATUS {
		t.Fatalf("first command of the new session %v, want RESYNC_STATUS", c)
	}
	s.sendReport(t, &droverv1.StatusReport{Full: true})
	eventually(t, "old forgotten after the full report", func() bool {
		return !slices.ContainsFunc(h.clusterStatuses(t, "a"), func(st *droverv1.ApplicationStatus) bool { return st.GetApplication() == "old" })
	})
	h.checkStatuses(t, "a", webSt)

	// A new placement works as a relabel does, both ways.
	h.mustAPI(t, "PUT", "/api/v1/applications/web", webApp("web", repo.URL, map[string]string{"fleet": "none"}), nil)
	s.awaitApplications(t)
	removing = proto.CloneOf(webSt)
	removing.Removing = true
	h.checkStatuses(t, "a", removing)
	h.mustAPI(t, "PUT", "/api/v1/applications/web", webApp("web", repo.URL, map[string]string{"fleet": "all"}), nil)
	s.awaitApplications(t, "web@"+c1)
	h.checkStatuses(t, "a", webSt)
}
