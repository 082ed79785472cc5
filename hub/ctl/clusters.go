package ctl

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func runGetClusters(ctx context.Context, x *invocation, args []string) error {
	var selector string
	x.fs.StringVar(&selector, "l", "", "label selector, e.g. 'env=prod,region in (eu,us)'")
	x.fs.StringVar(&selector, "selector", "", "same as -l")
	o := x.outputFlag(true)
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	if err := x.checkOutput(*o, true); err != nil {
		return err
	}
	// Checked here too so a typo is a usage error, not a round trip.
	if _, err := labels.Parse(selector); err != nil {
		return x.usageErrorf("-l %q: %v", selector, err)
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	all := &droverv1.ListClustersResponse{}
	q := url.Values{"selector": {selector}, "page_size": {fmt.Sprint(x.cli.pageSize())}}
	for {
		var page droverv1.ListClustersResponse
		if err := c.call(ctx, "GET", apiPath("clusters"), q, nil, &page); err != nil {
			return err
		}
		all.Clusters = append(all.Clusters, page.GetClusters()...)
		if page.GetNextPageToken() == "" {
			break
		}
		q.Set("page_token", page.GetNextPageToken())
	}
	if *o == outJSON || *o == outYAML {
		return printMessage(x.out(), *o, all)
	}
	if len(all.GetClusters()) == 0 {
		fmt.Fprintln(x.errOut(), "No clusters found.")
		return nil
	}
	now := x.now()
	headers := []string{"NAME", "STATUS", "HEALTHY", "KUBERNETES", "LAST SEEN", "AGE"}
	if *o == outWide {
		headers = append(headers, "NODES", "AGENT", "ASSIGNMENT", "REPLICA", "LABELS")
	}
	t := newTable(x.out(), headers...)
	for _, cl := range all.GetClusters() {
		row := []string{
			cl.GetName(),
			clusterState(cl),
			fraction(cl.GetHealthCounts()["Healthy"], sum(cl.GetHealthCounts())),
			cl.GetFacts().GetKubernetesVersion(),
			age(now, cl.GetLastSeen()),
			age(now, cl.GetCreatedAt()),
		}
		if *o == outWide {
			nodes := ""
			if cl.GetFacts() != nil {
				nodes = fmt.Sprint(cl.GetFacts().GetNodeCount())
			}
			row = append(row, nodes, cl.GetFacts().GetAgentVersion(), assignmentState(cl), cl.GetHubReplica(), formatLabels(cl.GetLabels()))
		}
		t.row(row...)
	}
	return t.flush()
}

// clusterState is the STATUS column: Revoked, Online, Offline, or
// Registered for a cluster whose agent has never connected.
func clusterState(c *droverv1.Cluster) string {
	switch {
	case c.GetRevoked():
		return "Revoked"
	case c.GetOnline():
		return "Online"
	case c.GetLastSeen() == nil:
		return "Registered"
	}
	return "Offline"
}

// assignmentState says whether the agent runs the assignment the hub
// wants: Applied, Pending (not acknowledged yet) or Rejected (NACKed).
func assignmentState(c *droverv1.Cluster) string {
	switch {
	case c.GetNackError() != "":
		return "Rejected"
	case c.GetAssignmentVersion() == "":
		return ""
	case c.GetAckedVersion() == c.GetAssignmentVersion():
		return "Applied"
	}
	return "Pending"
}

func runDescribeCluster(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.GetClusterResponse
	if err := c.call(ctx, "GET", apiPath("clusters", pos[0]), nil, nil, &resp); err != nil {
		return err
	}
	now := x.now()
	cl := resp.GetCluster()
	f := newFields(x.out())
	f.add("Name", cl.GetName())
	f.add("Labels", joinLabels(cl.GetLabels(), "\n"))
	status := clusterState(cl)
	if cl.GetLastSeen() != nil {
		status += fmt.Sprintf(" (last seen %s)", ago(now, cl.GetLastSeen()))
	}
	f.add("Status", status)
	if cl.GetConnectedSince() != nil {
		f.add("Connected since", ago(now, cl.GetConnectedSince()))
	} else {
		f.add("Connected since", "")
	}
	f.add("Hub replica", cl.GetHubReplica())
	f.add("Peer address", cl.GetPeerAddress())
	f.add("Created", ago(now, cl.GetCreatedAt()))
	f.section("Facts")
	f.add("Kubernetes", cl.GetFacts().GetKubernetesVersion())
	nodes := ""
	if cl.GetFacts() != nil {
		nodes = fmt.Sprint(cl.GetFacts().GetNodeCount())
	}
	f.add("Nodes", nodes)
	f.add("Agent", cl.GetFacts().GetAgentVersion())
	f.endSection()
	f.section("Assignment")
	f.add("State", assignmentState(cl))
	f.add("Wanted version", cl.GetAssignmentVersion())
	acked := cl.GetAckedVersion()
	if acked != "" && cl.GetAckedAt() != nil {
		acked += fmt.Sprintf(" (%s)", ago(now, cl.GetAckedAt()))
	}
	f.add("Acked version", acked)
	f.add("Rejected with", cl.GetNackError())
	f.endSection()
	if err := f.flush(); err != nil {
		return err
	}
	return printClusterApps(x, resp.GetApplications())
}

// removingState and removingMessage describe an application that left the
// cluster's assignment, until its agent confirms the removal.
const (
	removingState   = "Removing"
	removingMessage = "waiting for the agent to confirm the prune"
)

// printClusterApps prints the applications on a cluster, then the
// resources of each.
func printClusterApps(x *invocation, sts []*droverv1.ApplicationStatus) error {
	fmt.Fprintln(x.out(), "Applications:")
	if len(sts) == 0 {
		fmt.Fprintln(x.out(), "  "+none)
		return nil
	}
	sort.Slice(sts, func(i, j int) bool { return sts[i].GetApplication() < sts[j].GetApplication() })
	now := x.now()
	t := newIndentedTable(x.out(), "  ", "NAME", "COMMIT", "SYNC", "HEALTH", "OBSERVED", "MESSAGE")
	for _, st := range sts {
		if st.GetRemoving() {
			// What the agent last said is history now: the state that
			// matters is the removal the hub waits for.
			t.row(st.GetApplication(), shortCommit(st.GetCommit()), removingState, "", age(now, st.GetObservedAt()), removingMessage)
			continue
		}
		t.row(st.GetApplication(), shortCommit(st.GetCommit()), st.GetSync().Name(), st.GetHealth().Name(), age(now, st.GetObservedAt()), st.GetMessage())
	}
	if err := t.flush(); err != nil {
		return err
	}
	var n int
	for _, st := range sts {
		if !st.GetRemoving() {
			n += len(st.GetResources())
		}
	}
	if n == 0 {
		return nil
	}
	fmt.Fprintln(x.out(), "Resources:")
	t = newIndentedTable(x.out(), "  ", "APPLICATION", "KIND", "NAME", "HEALTH", "DRIFTED", "MESSAGE")
	for _, st := range sts {
		if st.GetRemoving() {
			continue
		}
		for _, r := range st.GetResources() {
			drifted := "no"
			if r.GetDrifted() {
				drifted = "yes"
			}
			t.row(st.GetApplication(), resourceKind(r), resourceName(r), r.GetHealth().Name(), drifted, r.GetMessage())
		}
	}
	return t.flush()
}

// resourceKind is "Kind.group" as kubectl names kinds, or "Kind" for the
// core group.
func resourceKind(r *droverv1.ResourceStatus) string {
	if r.GetGroup() == "" {
		return r.GetKind()
	}
	return r.GetKind() + "." + r.GetGroup()
}

// resourceName is "namespace/name", or "name" for cluster-scoped objects.
func resourceName(r *droverv1.ResourceStatus) string {
	if r.GetNamespace() == "" {
		return r.GetName()
	}
	return r.GetNamespace() + "/" + r.GetName()
}

func runLabelCluster(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parse(args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return x.usageErrorf("want a cluster name and at least one KEY=VALUE or KEY-")
	}
	req, err := parseLabelArgs(pos[1:])
	if err != nil {
		return x.usageErrorf("%v", err)
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.UpdateClusterLabelsResponse
	if err := c.call(ctx, "PATCH", apiPath("clusters", pos[0], "labels"), nil, req, &resp); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "cluster/%s labeled\n", resp.GetCluster().GetName())
	return nil
}

// parseLabelArgs reads kubectl's label syntax: KEY=VALUE sets, KEY-
// removes. Keys and values are checked by the hub, with Kubernetes' rules.
func parseLabelArgs(args []string) (*droverv1.UpdateClusterLabelsRequest, error) {
	req := &droverv1.UpdateClusterLabelsRequest{Set: map[string]string{}}
	removed := map[string]bool{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			if k == "" {
				return nil, fmt.Errorf("%q: empty label key", a)
			}
			if old, dup := req.Set[k]; dup && old != v {
				return nil, fmt.Errorf("label %q: given twice with different values", k)
			}
			req.Set[k] = v
			continue
		}
		if k, ok := strings.CutSuffix(a, "-"); ok && k != "" {
			if !removed[k] {
				req.Remove = append(req.Remove, k)
			}
			removed[k] = true
			continue
		}
		return nil, fmt.Errorf("%q: want KEY=VALUE to set a label or KEY- to remove one", a)
	}
	for k := range removed {
		if _, ok := req.Set[k]; ok {
			return nil, fmt.Errorf("label %q: both set and removed", k)
		}
	}
	return req, nil
}

func runRevokeCluster(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.RevokeClusterResponse
	if err := c.call(ctx, "POST", apiPath("clusters", pos[0], "revoke"), nil, nil, &resp); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "cluster/%s revoked\n", pos[0])
	return nil
}

func runDeleteCluster(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	if err := c.call(ctx, "DELETE", apiPath("clusters", pos[0]), nil, nil, &droverv1.DeleteClusterResponse{}); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "cluster/%s deleted\n", pos[0])
	return nil
}
