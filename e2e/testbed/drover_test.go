package testbed

import (
	"context"
	"net/http"
	"testing"
	"time"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// TestDroverProcesses runs a real drover-hub and drover-agent and checks
// what the process helpers promise: the hub serves on the same addresses
// with the same admin token after kill -9 and restart, the agent registers
// once and resumes from its state directory after kill -9 (its join token
// is single-use), and it reconnects to a restarted hub.
func TestDroverProcesses(t *testing.T) {
	hub := StartHub(t, HubOptions{DatabaseURL: Postgres(t)})
	cluster := Clusters(t, 1)[0]
	agent := StartAgent(t, AgentOptions{
		Name:       cluster.Name,
		Kubeconfig: cluster.Kubeconfig,
		HubAddr:    hub.AgentAddr,
		HubCAFile:  hub.CAFile,
		JoinToken:  hub.JoinToken(t, map[string]string{"env": "testbed"}),
		Args:       []string{"--heartbeat", "1s", "--backoff-max", "2s"},
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// connectedAfter waits until the cluster's current session started
	// after since, i.e. the agent connected (again) after since.
	connectedAfter := func(what string, since time.Time) *droverv1.Cluster {
		t.Helper()
		var c *droverv1.Cluster
		err := waitUntil(ctx, what, []*Process{hub.Process(), agent.Process()}, func(ctx context.Context) (bool, error) {
			var resp droverv1.GetClusterResponse
			if err := hub.API(ctx, http.MethodGet, "/api/v1/clusters/"+cluster.Name, nil, &resp); err != nil {
				return false, err
			}
			c = resp.GetCluster()
			return c.GetOnline() && c.GetConnectedSince().AsTime().After(since), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	c := connectedAfter("the agent's first session", time.Time{})
	if got := c.GetLabels()["env"]; got != "testbed" {
		t.Errorf("cluster labels %v: want env=testbed from the join token", c.GetLabels())
	}

	addrs := [2]string{hub.AgentAddr, hub.HTTPAddr}
	hub.Kill(t)
	if p := hub.Process(); !p.Exited() || p.Status() != "signal: killed" {
		t.Fatalf("after Kill the hub %s: want killed", p.Status())
	}
	restarted := time.Now()
	hub.Start(t)
	if got := [2]string{hub.AgentAddr, hub.HTTPAddr}; got != addrs {
		t.Errorf("restarted hub listens on %v: want %v", got, addrs)
	}
	// The admin token of the first start still works.
	if err := hub.API(ctx, http.MethodGet, "/api/v1/status", nil, &droverv1.GetHubStatusResponse{}); err != nil {
		t.Fatalf("admin API after restart: %v", err)
	}
	connectedAfter("the agent to reconnect to the restarted hub", restarted)

	agent.Kill(t)
	if p := agent.Process(); !p.Exited() || p.Status() != "signal: killed" {
		t.Fatalf("after Kill the agent %s: want killed", p.Status())
	}
	restarted = time.Now()
	agent.Start(t) // its join token is used up: this runs on its stored identity
	connectedAfter("the restarted agent to reconnect", restarted)

	agent.Stop(t)
	hub.Stop(t)
	for _, p := range []*Process{agent.Process(), hub.Process()} {
		if !p.Exited() {
			t.Errorf("%s runs after Stop", p.name)
		}
	}
}
