package ctl

import (
	"context"
	"fmt"
	"io"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func runRolloutStatus(ctx context.Context, x *invocation, args []string) error {
	o := x.outputFlag(true)
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	if err := x.checkOutput(*o, true); err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.GetRolloutResponse
	if err := c.call(ctx, "GET", apiPath("applications", pos[0], "rollout"), nil, nil, &resp); err != nil {
		return err
	}
	if *o == outJSON || *o == outYAML {
		return printMessage(x.out(), *o, &resp)
	}
	r := resp.GetRollout()
	printRolloutSummary(x.out(), r)
	fmt.Fprintln(x.out(), "Waves:")
	if len(r.GetWaves()) == 0 {
		fmt.Fprintln(x.out(), "  "+none)
	} else {
		now := x.now()
		t := newIndentedTable(x.out(), "  ", "WAVE", "PHASE", "DONE", "UPDATING", "PENDING", "FAILED", "SKIPPED", "ROLLED-BACK", "SOAK-UNTIL", "APPROVAL")
		for _, w := range r.GetWaves() {
			n := w.GetClusterPhases()
			t.row(
				w.GetName(),
				w.GetPhase(),
				fraction(n["succeeded"], w.GetClusters()),
				fmt.Sprint(n["updating"]),
				fmt.Sprint(n["pending"]),
				fmt.Sprint(n["failed"]),
				fmt.Sprint(n["skipped"]),
				fmt.Sprint(n["rolled-back"]),
				until(now, w.GetSoakUntil()),
				approvalState(r, w),
			)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if *o != outWide {
		return nil
	}
	fmt.Fprintln(x.out(), "Clusters:")
	if len(r.GetClusters()) == 0 {
		fmt.Fprintln(x.out(), "  "+none)
		return nil
	}
	t := newIndentedTable(x.out(), "  ", "CLUSTER", "WAVE", "PHASE", "COMMIT", "MESSAGE")
	for _, cl := range r.GetClusters() { // the hub sends them by wave, then name
		t.row(cl.GetName(), cl.GetWave(), cl.GetPhase(), shortCommit(cl.GetCommit()), cl.GetMessage())
	}
	return t.flush()
}

// printRolloutSummary prints the rollout's header line, why it ended as it
// did, and what it waits for.
//
// An application without a rollout strategy has no rollout to number (the
// hub's are numbered from 1): what it shows is its current release, which
// went to every cluster at once.
func printRolloutSummary(w io.Writer, r *droverv1.RolloutStatus) {
	if r.GetId() == 0 {
		fmt.Fprintf(w, "Release %s of %s: no rollout strategy, phase %s\n", shortCommit(r.GetCommit()), r.GetApplication(), r.GetPhase())
	} else {
		fmt.Fprintf(w, "Rollout %d of %s: release %s, previous good %s, phase %s\n",
			r.GetId(), r.GetApplication(), shortCommit(r.GetCommit()), orDefault(shortCommit(r.GetPreviousCommit()), none), r.GetPhase())
	}
	if r.GetReason() != "" {
		fmt.Fprintf(w, "Reason: %s\n", r.GetReason())
	}
	if r.GetWaiting() != "" {
		fmt.Fprintln(w, r.GetWaiting())
	}
}

// approvalState is the APPROVAL column: "no" for a wave that needs none,
// "waiting" while it waits for a promote, "approved" once promoted, else
// "required". A first release skips the gates, so its waves stay
// "required".
func approvalState(r *droverv1.RolloutStatus, w *droverv1.RolloutWaveStatus) string {
	switch {
	case !w.GetRequiresApproval():
		return "no"
	case w.GetPhase() == "waiting-approval":
		return "waiting"
	case w.GetPhase() == "pending" || r.GetPreviousCommit() == "":
		return "required"
	}
	return "approved"
}

// rolloutOps maps each control command's op to what it printed as done.
var rolloutOps = map[string]string{
	"pause":    "paused",
	"resume":   "resumed",
	"promote":  "promoted",
	"abort":    "aborted",
	"rollback": "rolled back",
}

// runRolloutControl returns the command for op: the hub refuses an op that
// does not apply to the rollout as it stands, and says why.
func runRolloutControl(op string) func(ctx context.Context, x *invocation, args []string) error {
	return func(ctx context.Context, x *invocation, args []string) error {
		pos, err := x.parseN(args, 1)
		if err != nil {
			return err
		}
		c, err := x.client()
		if err != nil {
			return err
		}
		var resp droverv1.ControlRolloutResponse
		if err := c.call(ctx, "POST", apiPath("applications", pos[0], "rollout", op), nil, nil, &resp); err != nil {
			return err
		}
		fmt.Fprintf(x.out(), "rollout/%s %s\n", pos[0], rolloutOps[op])
		if w := resp.GetRollout().GetWaiting(); w != "" {
			fmt.Fprintln(x.out(), w)
		}
		return nil
	}
}
