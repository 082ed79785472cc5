package rollout

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The tests drive Step like the engine would: a sim holds the State and
// what the hub observes, and every step checks the properties the engine
// relies on: Step does not modify its input, a second call with the same
// inputs changes nothing and returns no action, and a State that went
// through JSON (a hub restart) carries on exactly the same.

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	synced     = droverv1.SyncState_SYNC_STATE_SYNCED
	outOfSync  = droverv1.SyncState_SYNC_STATE_OUT_OF_SYNC
	syncFailed = droverv1.SyncState_SYNC_STATE_FAILED
	healthy    = droverv1.Health_HEALTH_HEALTHY
	progress   = droverv1.Health_HEALTH_PROGRESSING
	degraded   = droverv1.Health_HEALTH_DEGRADED
)

// commits maps the SHAs the tests use back to their names for messages.
var commits = map[string]string{}

// sha returns a full commit SHA for a name such as "w" or "y".
func sha(name string) string {
	h := sha1.Sum([]byte(name))
	s := hex.EncodeToString(h[:])
	commits[s] = name
	return s
}

type sim struct {
	t   testing.TB
	s   State
	obs Observations
	now time.Time
	// log is every action returned, in order.
	log []Action
}

func newSim(t testing.TB, strategy *spec.Strategy, clusters ...Cluster) *sim {
	m := &sim{t: t, now: t0, obs: Observations{Strategy: strategy, Placed: clusters, Clusters: map[string]Observation{}}}
	for _, c := range clusters {
		m.obs.Clusters[c.Name] = Observation{Online: true, LastSeen: t0}
	}
	return m
}

// released returns a sim whose application already completed release "w",
// its first (which goes everywhere at once).
func released(t testing.TB, strategy *spec.Strategy, clusters ...Cluster) *sim {
	m := newSim(t, strategy, clusters...)
	m.release("w")
	if m.s.Phase != PhaseCompleted {
		t.Fatalf("first release: phase %s, want completed", m.s.Phase)
	}
	m.log = nil
	return m
}

// fork returns a copy of m that shares nothing mutable with it, for a
// subtest that takes the scenario elsewhere.
func (m *sim) fork(t testing.TB) *sim {
	f := *m
	f.t = t
	f.obs.Clusters = maps.Clone(m.obs.Clusters)
	f.obs.Placed = slices.Clone(m.obs.Placed)
	f.log = slices.Clone(m.log)
	return &f
}

func (m *sim) release(name string) []Action {
	m.t.Helper()
	m.obs.Commit = sha(name)
	return m.step()
}

func (m *sim) step() []Action {
	m.t.Helper()
	before := mustJSON(m.t, m.s)
	next, actions := Step(m.s, m.obs, m.now)
	if mustJSON(m.t, m.s) != before {
		m.t.Fatal("Step modified the State it was given")
	}
	want := mustJSON(m.t, next)
	again, more := Step(next, m.obs, m.now)
	if len(more) != 0 || mustJSON(m.t, again) != want {
		m.t.Fatalf("Step is not idempotent: the same inputs again gave %s", describe(more))
	}
	var restored State
	if err := json.Unmarshal([]byte(want), &restored); err != nil {
		m.t.Fatal(err)
	}
	again, more = Step(restored, m.obs, m.now)
	if len(more) != 0 || mustJSON(m.t, again) != want {
		m.t.Fatalf("Step after a JSON round trip (a restart) is not idempotent: %s", describe(more))
	}
	m.s = next
	m.log = append(m.log, actions...)
	return actions
}

func (m *sim) control(op Op) []Action {
	m.t.Helper()
	next, actions, err := Control(m.s, op, m.now)
	if err != nil {
		m.t.Fatalf("Control(%s): %v", op, err)
	}
	m.s = next
	m.log = append(m.log, actions...)
	return actions
}

func (m *sim) tick(d time.Duration) {
	m.now = m.now.Add(d)
	for name, o := range m.obs.Clusters {
		if o.Online {
			o.LastSeen = m.now
			m.obs.Clusters[name] = o
		}
	}
}

// report records a status of the current release observed now.
func (m *sim) report(name string, sync droverv1.SyncState, health droverv1.Health) {
	m.reportAt(name, m.obs.Commit, sync, health, m.now)
}

func (m *sim) reportAt(name, commit string, sync droverv1.SyncState, health droverv1.Health, at time.Time) {
	o := m.obs.Clusters[name]
	o.Status = &Status{Commit: commit, Sync: sync, Health: health, Message: "msg from " + name, ObservedAt: at}
	m.obs.Clusters[name] = o
}

// succeed waits a minute, has the clusters report Synced and Healthy, and
// steps.
func (m *sim) succeed(names ...string) []Action {
	m.t.Helper()
	m.tick(time.Minute)
	for _, n := range names {
		m.report(n, synced, healthy)
	}
	return m.step()
}

func (m *sim) offline(name string, lastSeen time.Time) {
	o := m.obs.Clusters[name]
	o.Online, o.LastSeen = false, lastSeen
	m.obs.Clusters[name] = o
}

func (m *sim) online(name string) {
	o := m.obs.Clusters[name]
	o.Online, o.LastSeen = true, m.now
	m.obs.Clusters[name] = o
}

// pins renders Pins as "c1=y c2=w", sorted.
func (m *sim) pins() string {
	p := Pins(m.s)
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(p)) {
		parts = append(parts, name+"="+commits[p[name]])
	}
	return strings.Join(parts, " ")
}

// phases renders cluster phases as "c1:succeeded c2:updating", sorted.
func (m *sim) phases() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(m.s.Clusters)) {
		parts = append(parts, name+":"+string(m.s.Clusters[name].Phase))
	}
	return strings.Join(parts, " ")
}

// waves renders wave phases as "canary:done europe:running".
func (m *sim) waves() string {
	var parts []string
	for _, w := range m.s.Waves {
		parts = append(parts, w.Name+":"+string(w.Phase))
	}
	return strings.Join(parts, " ")
}

func (m *sim) wantPins(want string) {
	m.t.Helper()
	if got := m.pins(); got != want {
		m.t.Fatalf("pins:\n got %s\nwant %s", got, want)
	}
}

func (m *sim) wantPhases(want string) {
	m.t.Helper()
	if got := m.phases(); got != want {
		m.t.Fatalf("cluster phases:\n got %s\nwant %s", got, want)
	}
}

func (m *sim) wantWaves(want string) {
	m.t.Helper()
	if got := m.waves(); got != want {
		m.t.Fatalf("wave phases:\n got %s\nwant %s", got, want)
	}
}

func (m *sim) wantPhase(want Phase) {
	m.t.Helper()
	if m.s.Phase != want {
		m.t.Fatalf("rollout phase %s (%s), want %s", m.s.Phase, m.s.Reason, want)
	}
}

func (m *sim) wantWaiting(want string) {
	m.t.Helper()
	if got := Waiting(m.s, m.now); got != want {
		m.t.Fatalf("Waiting:\n got %q\nwant %q", got, want)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// describe renders actions as "pin c1=y; event rollout.wave.started".
func describe(actions []Action) string {
	var parts []string
	for _, a := range actions {
		switch a := a.(type) {
		case *Pin:
			parts = append(parts, fmt.Sprintf("pin %s=%s", a.Cluster, commits[a.Commit]))
		case *Event:
			s := "event " + a.Kind
			if a.Cluster != "" {
				s += " " + a.Cluster
			}
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "; ")
}

// kinds lists the event kinds among actions.
func kinds(actions []Action) []string {
	var out []string
	for _, a := range actions {
		if e, ok := a.(*Event); ok {
			out = append(out, e.Kind)
		}
	}
	return out
}

func cluster(name string, kv ...string) Cluster {
	l := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return Cluster{Name: name, Labels: l}
}

func selector(kv ...string) *metav1.LabelSelector {
	l := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: l}
}

// fleetOf is the tests' usual fleet: two canaries (c1 also in the EU, so
// the waves overlap), four clusters in the EU and four in the US.
func fleetOf() []Cluster {
	return []Cluster{
		cluster("c1", "ring", "canary", "region", "eu"),
		cluster("c2", "ring", "canary", "region", "us"),
		cluster("eu1", "region", "eu"), cluster("eu2", "region", "eu"),
		cluster("eu3", "region", "eu"), cluster("eu4", "region", "eu"),
		cluster("us1", "region", "us"), cluster("us2", "region", "us"),
		cluster("us3", "region", "us"), cluster("us4", "region", "us"),
	}
}

// issueStrategy is the strategy of the issue's example.
const issueStrategy = `
waves:
- name: canary
  selector: {matchLabels: {ring: canary}}
  maxParallel: 1
  soak: 10m
- name: europe
  selector: {matchLabels: {region: eu}}
  maxParallel: 25%
  requireApproval: true
- name: rest            # no selector: every placed cluster not yet in a wave
  maxParallel: 50%
maxFailures: 0
onFailure: pause
progressDeadline: 10m
offlineTimeout: 15m
`

func mustParse(t testing.TB, yamlText string) *spec.Strategy {
	t.Helper()
	s, err := spec.ParseStrategy([]byte(yamlText))
	if err != nil {
		t.Fatalf("ParseStrategy: %v", err)
	}
	return s
}

// TestParseStrategyIssueExample checks that the issue's example reads as
// the strategy the simulations here plan with.
func TestParseStrategyIssueExample(t *testing.T) {
	got := mustParse(t, issueStrategy)
	want := &spec.Strategy{
		Waves: []spec.WaveSpec{
			{Name: "canary", Selector: selector("ring", "canary"), MaxParallel: spec.Count(1), Soak: 10 * time.Minute},
			{Name: "europe", Selector: selector("region", "eu"), MaxParallel: spec.Percent(25), RequireApproval: true},
			{Name: "rest", MaxParallel: spec.Percent(50)},
		},
		MaxFailures:      spec.Count(0),
		OnFailure:        spec.FailurePause,
		ProgressDeadline: 10 * time.Minute,
		OfflineTimeout:   15 * time.Minute,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseStrategy:\n got %+v\nwant %+v", got, want)
	}
}
