package faults

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
)

// TestPostgresRestart stops the hub's PostgreSQL while agents report a new
// release and starts it again: the hub process stays up, the agents stay
// connected, the failed writes are retried, and every status and
// acknowledgement the agents sent while the database was down is in it
// afterwards.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	const apps = 8
	pg := testbed.PrivatePostgres(t)
	b := newBed(t, pg.URL, map[string]map[string]string{
		"pg-1": {"env": "prod"},
		"pg-2": {"env": "prod"},
	})
	commit := b.repo.Commit(t, "load generation 1", configMapApps("load", apps, 1))
	b.createConfigMapApps("load", apps)
	b.waitAllSynced(apps, commit)
	hubPid := b.hub.Process().Pid()
	sessionsBefore := map[string]int{}
	for _, c := range b.names() {
		sessionsBefore[c] = b.sessions(c)
	}
	writeFailures := func() int { return logCount(b.hub.Process(), `msg="write statuses"`) }
	failuresBefore := writeFailures()

	// The release is made while the database is up; the agents, frozen
	// meanwhile, apply it and report it while it is down.
	for _, c := range b.names() {
		if err := b.agents[c].Process().Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	commit = b.repo.Commit(t, "load generation 2", configMapApps("load", apps, 2))
	b.refreshConfigMapApps("load", apps)
	pg.Stop(t)
	stopped := time.Now()
	for _, c := range b.names() {
		if err := b.agents[c].Process().Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	t.Log("PostgreSQL stopped")
	for _, c := range b.names() {
		testbed.Eventually(t, "generation 2 applied on "+c+" with the database down", waitLong, func() (bool, string) {
			n := b.configMapsAt(c, "load-", 2)
			return n == apps, fmt.Sprintf("%d of %d ConfigMaps at generation 2", n, apps)
		})
	}
	// The hub took statuses it could not write: it says so.
	testbed.Eventually(t, "the hub failing to write statuses", waitLong, func() (bool, string) {
		n := writeFailures() - failuresBefore
		return n >= 2, fmt.Sprintf("%d failed writes", n)
	})
	if p := b.hub.Process(); p.Exited() {
		t.Fatalf("the hub exited with its database down: %v", p.ExitError())
	}

	pg.Start(t)
	restarted := time.Now()
	t.Logf("PostgreSQL started again after %v", restarted.Sub(stopped).Round(time.Millisecond))
	b.waitAllSynced(apps, commit)
	figure(t, "PostgreSQL restart: outage %v; database back to every status current: %v; failed status writes retried: %d",
		restarted.Sub(stopped).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond), writeFailures()-failuresBefore)

	// Statuses the agents observed, and so sent, while the database was
	// down are stored: the hub kept them and wrote them once it could.
	during := 0
	for i := range apps {
		for _, c := range b.names() {
			s, err := b.status(fmt.Sprintf("load-%02d", i), c)
			if err != nil {
				t.Fatal(err)
			}
			if at := s.GetObservedAt().AsTime(); at.After(stopped) && at.Before(restarted) {
				during++
			}
		}
	}
	figure(t, "PostgreSQL restart: %d of %d stored statuses were observed and sent while the database was down", during, apps*len(b.clusters))
	if during == 0 {
		t.Errorf("no stored status was sent while the database was down: the test did not exercise the outage")
	}
	if p := b.hub.Process(); p.Exited() || p.Pid() != hubPid {
		t.Errorf("the hub did not stay up through the database restart")
	}
	for _, c := range b.names() {
		n := b.sessions(c) - sessionsBefore[c]
		figure(t, "PostgreSQL restart: %s reconnects: %d", c, n)
		if n != 0 {
			t.Errorf("%s opened %d new sessions with the hub: its session did not survive the database restart", c, n)
		}
	}
	// The agents' acknowledgements of the release, sent while the
	// database was down, are not lost either.
	for _, c := range b.names() {
		testbed.Eventually(t, c+" acknowledged the current assignment", waitLong, func() (bool, string) {
			cl, err := b.cluster(c)
			if err != nil {
				return false, err.Error()
			}
			return cl.GetAckedVersion() != "" && cl.GetAckedVersion() == cl.GetAssignmentVersion(), fmt.Sprintf("cluster %v", cl)
		})
	}
}

// waitAllSynced waits until the hub has every load application Synced and
// Healthy at commit on every cluster.
func (b *bed) waitAllSynced(apps int, commit string) {
	b.t.Helper()
	for i := range apps {
		for _, c := range b.names() {
			b.waitSynced(fmt.Sprintf("load-%02d", i), c, commit)
		}
	}
}
