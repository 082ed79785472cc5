package ctl

import (
	"context"
	"fmt"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// runGetReplicas lists the hub replicas sharing the database. Which
// replica answered matters for STATE (its gossip view), so it is named.
func runGetReplicas(ctx context.Context, x *invocation, args []string) error {
	var resp droverv1.ListReplicasResponse
	o, printed, err := x.getList(ctx, args, true, apiPath("replicas"), &resp)
	if printed || err != nil {
		return err
	}
	if len(resp.GetReplicas()) == 0 {
		fmt.Fprintln(x.errOut(), "No replicas found.")
		return nil
	}
	now := x.now()
	headers := []string{"NAME", "STATE", "STREAMS", "JOBS", "VERSION", "STARTED", "ADDRESS"}
	if o == outWide {
		headers = append(headers, "HEARTBEAT", "HTTP", "GOSSIP")
	}
	t := newTable(x.out(), headers...)
	for _, r := range resp.GetReplicas() {
		row := []string{
			r.GetName(), r.GetState(), fmt.Sprint(r.GetStreams()), fmt.Sprint(len(r.GetJobs())),
			r.GetVersion(), age(now, r.GetStartedAt()), r.GetAgentAddr(),
		}
		if o == outWide {
			row = append(row, ago(now, r.GetHeartbeatAt()), r.GetHttpAddr(), r.GetPeerAddr())
		}
		t.row(row...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(x.errOut(), "States as replica %s sees them.\n", resp.GetAnsweredBy())
	return nil
}
