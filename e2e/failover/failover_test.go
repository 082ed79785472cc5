// Package failover tests agents that know several hub replicas: two hubs
// started in-process on one PostgreSQL, sharing the CA and the credential
// key as replicas do, and in-process agents on local Kubernetes clusters
// from the test bed, given both replicas in --hub. An agent whose replica
// stops is served by the other without being sent what it has; agents
// with every replica down back off and come back when one does; and a
// replica that sheds agents hands them to the other.
//
// Outcomes are asserted from what the agents, the hubs and PostgreSQL
// hold, never timings.
package failover

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/drover-dev/drover/agent/daemon"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/secrets"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// waitLong bounds every wait for an outcome on a machine shared with
// other heavy tests; it only bounds how long a broken build takes to fail.
const waitLong = 2 * time.Minute

// Agent settings of the tests: the agents' reconnect delays are the
// hubclient's defaults (1 s base) capped at backoffMax.
const (
	backoffBase = time.Second
	backoffMax  = 2 * time.Second
)

// replica is one hub of the bed, started and stopped by the test.
type replica struct {
	name string
	cfg  server.Config
	hub  *server.Hub // nil while stopped
}

// bed is two hub replicas on one database, a Git repository, and agents
// on local clusters whose --hub names both replicas.
type bed struct {
	t      *testing.T
	dbURL  string
	token  string // the initial admin token, good on every replica
	a, b   *replica
	caFile string
	repo   *testbed.Repo

	clusters []*testbed.Cluster
	agents   map[string]*daemon.Agent
}

// newBed starts replica a (b's address is reserved, b is not started) and
// one agent per cluster with --hub naming both; the agents register
// through a, whichever they try first.
func newBed(t *testing.T, clusters int) *bed {
	t.Helper()
	b := &bed{t: t, dbURL: testbed.Postgres(t), agents: map[string]*daemon.Agent{}}
	shared := t.TempDir()
	// The replicas' shared secrets: one CA for agent identities and one
	// credential key, made once as an operator would.
	if _, err := pki.LoadOrCreateCA(shared, testlog.New(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.LoadOrCreateKey(filepath.Join(shared, "secret.key")); err != nil {
		t.Fatal(err)
	}
	b.caFile = filepath.Join(shared, pki.CACertFile)
	b.a, b.b = b.newReplica("a", shared), b.newReplica("b", shared)
	b.start(b.a)
	tok, err := os.ReadFile(filepath.Join(b.a.cfg.DataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	b.token = strings.TrimSpace(string(tok))

	b.repo = testbed.GitServer(t).CreateRepo(t, "fleet")
	b.repo.Commit(t, "web", map[string]string{"apps/web/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: default\ndata:\n  gen: \"1\"\n"})
	b.clusters = testbed.Clusters(t, clusters)
	for i, c := range b.clusters {
		// One agent names a replica by a name that resolves to it, and
		// checks the replica's certificate against that name.
		hubs := b.a.cfg.AgentAddr + "," + b.b.cfg.AgentAddr
		if i == len(b.clusters)-1 {
			_, port, _ := net.SplitHostPort(b.a.cfg.AgentAddr)
			hubs = "localhost:" + port + "," + b.b.cfg.AgentAddr
		}
		b.startAgent(c, hubs)
	}
	return b
}

func (b *bed) newReplica(name, shared string) *replica {
	b.t.Helper()
	cfg := server.DefaultConfig()
	cfg.DataDir = filepath.Join(b.t.TempDir(), "hub-"+name)
	cfg.DatabaseURL = b.dbURL
	cfg.Replica = name
	// A fixed port, so that the replica comes back where agents look.
	cfg.AgentAddr = testbed.FreeAddr(b.t)
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Hostnames = []string{"127.0.0.1", "localhost"}
	cfg.CACertFile, cfg.CAKeyFile = filepath.Join(shared, pki.CACertFile), filepath.Join(shared, pki.CAKeyFile)
	cfg.SecretKeyFile = filepath.Join(shared, "secret.key")
	cfg.PollInterval = time.Hour // the tests resolve refs with refresh
	cfg.OfflineTimeout = 30 * time.Second
	r := &replica{name: name, cfg: cfg}
	b.t.Cleanup(func() { b.stop(r) })
	return r
}

// start starts r, which loads the fleet from the database as every
// replica does at start.
func (b *bed) start(r *replica) {
	b.t.Helper()
	h, err := server.Start(context.Background(), r.cfg, testlog.NewAt(b.t, slog.LevelInfo).With("replica", r.name), io.Discard)
	if err != nil {
		b.t.Fatalf("start replica %s: %v", r.name, err)
	}
	r.hub = h
}

// stop stops r, ending its agents' streams; a stopped replica stays so.
func (b *bed) stop(r *replica) {
	if r.hub != nil {
		r.hub.Close()
		r.hub = nil
	}
}

func (b *bed) startAgent(c *testbed.Cluster, hubs string) {
	b.t.Helper()
	cfg := daemon.DefaultConfig()
	cfg.HubAddr = hubs
	cfg.HubCAFile = b.caFile
	cfg.JoinToken = b.joinToken(map[string]string{"env": "prod"})
	cfg.ClusterName = c.Name
	cfg.StateDir = filepath.Join(b.t.TempDir(), "agent-"+c.Name)
	cfg.Kubeconfig = c.Kubeconfig
	cfg.Heartbeat = time.Second
	cfg.BackoffMax = backoffMax
	a, err := daemon.Start(context.Background(), cfg, testlog.NewAt(b.t, slog.LevelInfo).With("agent", c.Name))
	if err != nil {
		b.t.Fatalf("start agent %s: %v", c.Name, err)
	}
	b.agents[c.Name] = a
	b.t.Cleanup(func() { a.Stop() })
}

// api is the JSON admin API of a running replica, as the initial admin.
func (b *bed) api(r *replica) *testbed.HubProcess {
	return &testbed.HubProcess{HTTPAddr: r.hub.HTTPAddr(), AdminToken: b.token}
}

func (b *bed) call(method, path string, in, out proto.Message) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := b.a
	if r.hub == nil {
		r = b.b
	}
	if err := b.api(r).API(ctx, method, path, in, out); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) joinToken(labels map[string]string) string {
	b.t.Helper()
	var resp droverv1.CreateJoinTokenResponse
	b.call(http.MethodPost, "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{Ttl: "1h", Labels: labels}, &resp)
	return resp.GetToken()
}

// replicaOf names the replica an agent's session is with, "" for none.
func (b *bed) replicaOf(cluster string) string {
	addr := b.agents[cluster].Hub()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	for _, r := range []*replica{b.a, b.b} {
		if _, p, _ := net.SplitHostPort(r.cfg.AgentAddr); p == port {
			return r.name
		}
	}
	return "unknown " + addr
}

// waitOn waits until every listed agent's session is with replica r.
func (b *bed) waitOn(r *replica, clusters ...string) {
	b.t.Helper()
	for _, c := range clusters {
		testbed.Eventually(b.t, c+" served by replica "+r.name, waitLong, func() (bool, string) {
			got := b.replicaOf(c)
			return got == r.name, fmt.Sprintf("session with %q", got)
		})
	}
}

func (b *bed) names() []string {
	var out []string
	for _, c := range b.clusters {
		out = append(out, c.Name)
	}
	return out
}

// statusesWrittenAfter reports whether every status of cluster was
// written to the database after since, and what is there.
func (b *bed) statusesWrittenAfter(db *pgx.Conn, cluster string, since time.Time) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := db.Query(ctx, "SELECT application, updated_at FROM app_status WHERE cluster = $1 ORDER BY application", cluster)
	if err != nil {
		return false, err.Error()
	}
	defer rows.Close()
	var apps []string
	fresh := true
	for rows.Next() {
		var app string
		var at time.Time
		if err := rows.Scan(&app, &at); err != nil {
			return false, err.Error()
		}
		apps = append(apps, fmt.Sprintf("%s at %s", app, at.Format(time.StampMilli)))
		fresh = fresh && at.After(since)
	}
	if rows.Err() != nil {
		return false, rows.Err().Error()
	}
	return fresh && len(apps) > 0, fmt.Sprintf("statuses %v, want written after %s", apps, since.Format(time.StampMilli))
}

// TestAgentsFailOverBetweenReplicas is one fleet through a replica's
// stop, both replicas' outage and a shed. The subtests are its phases, in
// order, each starting where the last left the fleet: run them together.
func TestAgentsFailOverBetweenReplicas(t *testing.T) {
	b := newBed(t, 3)
	names := b.names()

	// Synced through a, b not yet up: every agent registered and
	// connected there, whichever replica it tried first.
	app := &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
		Source:    &droverv1.Source{RepoUrl: b.repo.URL, Ref: "main", Path: "apps/web"},
		Placement: &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
		// Only a release syncs again, so every status written later is
		// one the agent resent, not a new observation.
		SyncPolicy: &droverv1.SyncPolicy{Automated: true, Interval: "1h"},
	}}
	b.call(http.MethodPost, "/api/v1/applications", app, nil)
	b.call(http.MethodPost, "/api/v1/applications/web/refresh", nil, nil)
	applied := map[string]string{}
	for _, c := range names {
		testbed.Eventually(t, c+" synced", waitLong, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := b.api(b.a).Status(ctx, "web", c)
			if err != nil {
				return false, err.Error()
			}
			v := b.agents[c].AppliedVersion()
			return st.GetSync() == droverv1.SyncState_SYNC_STATE_SYNCED && v != "", fmt.Sprintf("hub says %v; agent applied %q", st, v)
		})
		applied[c] = b.agents[c].AppliedVersion()
	}
	b.waitOn(b.a, names...)

	// b starts, loads the fleet and computes every agent's assignment
	// itself: the same content, so the same version.
	b.start(b.b)
	for _, c := range names {
		if got := b.b.hub.Fleet().Assignment(c).GetVersion(); got != applied[c] {
			t.Fatalf("replica b's assignment of %s is version %q; the agent applied %q from a", c, got, applied[c])
		}
	}
	received := map[string]int64{}
	for _, c := range names {
		received[c] = b.agents[c].AssignmentsReceived()
	}

	db, err := pgx.Connect(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })

	t.Run("replica stops", func(t *testing.T) {
		b := *b
		b.t = t
		// Once a has stopped it writes nothing more: a status written
		// later came through b.
		b.stop(b.a)
		stopped := time.Now()
		b.waitOn(b.b, names...)
		for _, c := range names {
			// Resent at the session's start: b holds them as fresh as
			// the agent, whatever a lost since.
			testbed.Eventually(t, c+"'s statuses resent to b", waitLong, func() (bool, string) {
				return b.statusesWrittenAfter(db, c, stopped)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cl, err := b.api(b.b).Cluster(ctx, c)
			cancel()
			if err != nil || cl.GetHubReplica() != "b" {
				t.Errorf("%s: the hub records its stream on %q (%v); want b", c, cl.GetHubReplica(), err)
			}
		}
		b.checkNothingSent(received, applied)
	})

	t.Run("every replica down", func(t *testing.T) {
		b := *b
		b.t = t
		b.stop(b.b)
		// Over some rounds of failed attempts, count them: with every
		// replica down an agent waits at least half the base delay
		// after each round (three addresses at most: the agent that
		// names a by localhost may resolve it to two).
		c := names[0]
		start, from := time.Now(), b.agents[c].HubAttempts()
		testbed.Eventually(t, c+" retrying", waitLong, func() (bool, string) {
			n := b.agents[c].HubAttempts() - from
			return n >= 12, fmt.Sprintf("%d attempts", n)
		})
		n, elapsed := b.agents[c].HubAttempts()-from, time.Since(start)
		if most := 3 * (int64(elapsed/(backoffBase/2)) + 1); n > most {
			t.Errorf("%d attempts in %v with every replica down; want at most %d: the agent does not back off between rounds", n, elapsed, most)
		}
		t.Logf("figure: %d attempts in %v with every replica down", n, elapsed.Round(time.Millisecond))
		b.start(b.a)
		b.waitOn(b.a, names...)
		b.checkNothingSent(received, applied)
	})

	t.Run("shed", func(t *testing.T) {
		b := *b
		b.t = t
		b.start(b.b)
		attempts := map[string]int64{}
		for _, c := range names {
			attempts[c] = b.agents[c].HubAttempts()
		}
		if n := b.a.hub.Shed(2, time.Second); n != 2 {
			t.Fatalf("replica a shed %d agents; want 2", n)
		}
		var on map[string][]string
		testbed.Eventually(t, "two agents moved to b", waitLong, func() (bool, string) {
			on = map[string][]string{}
			for _, c := range names {
				r := b.replicaOf(c)
				on[r] = append(on[r], c)
			}
			return len(on["b"]) == 2 && len(on["a"]) == 1, fmt.Sprintf("agents by replica %v", on)
		})
		for _, c := range on["b"] {
			// Straight to b after the hint: the next address, or the one
			// after when a's name also resolved to an address a does not
			// listen on (localhost's ::1).
			if got := b.agents[c].HubAttempts() - attempts[c]; got != 1 && !(got == 2 && c == names[len(names)-1]) {
				t.Errorf("%s was shed and took %d attempts to reach b; want 1", c, got)
			}
		}
		if stayed := on["a"][0]; b.agents[stayed].HubAttempts() != attempts[stayed] {
			t.Errorf("%s was not shed but reconnected", stayed)
		}
		b.checkNothingSent(received, applied)
	})
}

// checkNothingSent checks that no replica sent an agent an assignment
// since received was counted, and the agents hold what they applied.
func (b *bed) checkNothingSent(received map[string]int64, applied map[string]string) {
	b.t.Helper()
	for c, n := range received {
		a := b.agents[c]
		if got := a.AssignmentsReceived(); got != n {
			b.t.Errorf("%s was sent %d assignments while moving between replicas; want none: the version it has is the replicas'", c, got-n)
		}
		if got := a.AppliedVersion(); got != applied[c] {
			b.t.Errorf("%s applied version %q; want %q still", c, got, applied[c])
		}
	}
}

// TestBadHubAddresses: an agent given a bad --hub refuses to start, says
// which address is wrong, and writes nothing.
func TestBadHubAddresses(t *testing.T) {
	for _, tt := range []struct{ hub, want string }{
		{"127.0.0.1:8443,,127.0.0.1:9443", `--hub "127.0.0.1:8443,,127.0.0.1:9443": address 2 is empty`},
		{"127.0.0.1:8443,127.0.0.1", `address "127.0.0.1": want HOST:PORT`},
		{"127.0.0.1:8443,127.0.0.1:8443", `address "127.0.0.1:8443" is given twice`},
	} {
		cfg := daemon.DefaultConfig()
		cfg.HubAddr = tt.hub
		cfg.HubCAFile, cfg.JoinToken, cfg.ClusterName = "ca.crt", "token", "c"
		cfg.StateDir = filepath.Join(t.TempDir(), "state")
		_, err := daemon.Start(context.Background(), cfg, testlog.New(t))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("--hub %q: %v; want an error with %q", tt.hub, err, tt.want)
		}
		if _, err := os.Stat(cfg.StateDir); !os.IsNotExist(err) {
			t.Errorf("--hub %q: the state directory was made (%v)", tt.hub, err)
		}
	}
}
