package ctl

import (
	"context"
	"fmt"
	"sort"
	"strings"

	droverspec "github.com/drover-dev/drover/hub/spec"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func runGetApps(ctx context.Context, x *invocation, args []string) error {
	var resp droverv1.ListApplicationsResponse
	o, printed, err := x.getList(ctx, args, true, apiPath("applications"), &resp)
	if printed || err != nil {
		return err
	}
	if len(resp.GetApplications()) == 0 {
		fmt.Fprintln(x.errOut(), "No applications found.")
		return nil
	}
	now := x.now()
	headers := []string{"NAME", "COMMIT", "CLUSTERS", "HEALTHY", "SYNCED", "AGE"}
	if o == outWide {
		headers = append(headers, "REPO", "REF", "PATH", "GENERATION")
	}
	t := newTable(x.out(), headers...)
	for _, s := range resp.GetApplications() {
		a := s.GetApplication()
		row := []string{
			a.GetName(),
			shortCommit(s.GetCommit()),
			fmt.Sprint(s.GetPlacedClusters()),
			fraction(s.GetHealthCounts()["Healthy"], s.GetPlacedClusters()),
			fraction(s.GetSyncCounts()["Synced"], s.GetPlacedClusters()),
			age(now, a.GetCreatedAt()),
		}
		if o == outWide {
			src := a.GetSpec().GetSource()
			ref := src.GetRef()
			if droverspec.SourceType(src) != droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED {
				// What a Helm or OCI source resolves: its version.
				ref = src.GetVersion()
			}
			row = append(row, src.GetRepoUrl(), ref, src.GetPath(), fmt.Sprint(a.GetGeneration()))
		}
		t.row(row...)
	}
	return t.flush()
}

func runDescribeApp(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.GetApplicationResponse
	if err := c.call(ctx, "GET", apiPath("applications", pos[0]), nil, nil, &resp); err != nil {
		return err
	}
	now := x.now()
	a := resp.GetApplication()
	spec := a.GetSpec()
	src := spec.GetSource()
	f := newFields(x.out())
	f.add("Name", a.GetName())
	f.add("Generation", fmt.Sprint(a.GetGeneration()))
	f.add("Created", ago(now, a.GetCreatedAt()))
	f.add("Updated", ago(now, a.GetUpdatedAt()))
	f.add("Commit", releaseCommit(resp.GetReleases()))
	f.section("Source")
	f.add("Repository", src.GetRepoUrl())
	switch droverspec.SourceType(src) {
	case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY:
		f.add("Chart", src.GetChart())
		f.add("Version", orDefault(src.GetVersion(), "(highest without a pre-release)"))
	case droverv1.SourceType_SOURCE_TYPE_OCI:
		f.add("Version", orDefault(src.GetVersion(), "latest"))
		f.add("Path", orDefault(src.GetPath(), "(root)"))
	default:
		f.add("Ref", orDefault(src.GetRef(), "(default branch)"))
		f.add("Path", orDefault(src.GetPath(), "(root)"))
		f.add("Extra paths", strings.Join(src.GetExtraPaths(), "\n"))
	}
	if src.GetInsecure() {
		f.add("Insecure", "plain HTTP allowed")
	}
	f.add("Poll interval", orDefault(src.GetPollInterval(), "(hub default)"))
	f.add("Error", resp.GetSourceError())
	f.endSection()
	f.section("Render")
	f.add("Type", orDefault(spec.GetRender().GetType(), "directory"))
	f.add("Namespace", spec.GetRender().GetNamespace())
	f.endSection()
	f.section("Placement")
	f.add("Selector", formatSelector(spec.GetPlacement().GetSelector()))
	f.add("Clusters", strings.Join(spec.GetPlacement().GetClusterNames(), ","))
	f.endSection()
	f.add("Sync policy", formatSyncPolicy(spec.GetSyncPolicy()))
	f.add("Overrides", formatOverrides(spec.GetOverrides()))
	if err := f.flush(); err != nil {
		return err
	}

	fmt.Fprintln(x.out(), "Releases:")
	if len(resp.GetReleases()) == 0 {
		fmt.Fprintln(x.out(), "  "+none)
	} else {
		t := newIndentedTable(x.out(), "  ", "COMMIT", "REF", "AGE", "NOOP", "CONTENT")
		for _, r := range resp.GetReleases() { // the hub sends them newest first
			noop := "no"
			if r.GetNoop() {
				noop = "yes"
			}
			t.row(shortCommit(r.GetCommit()), r.GetRef(), age(now, r.GetCreatedAt()), noop, shortCommit(contentCommit(r)))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return printAppClusters(x, resp.GetPlacedClusters(), resp.GetStatuses())
}

// releaseCommit says which commit the current release (the first of
// rels) is at and, when its clusters get an earlier commit's content,
// which and why.
func releaseCommit(rels []*droverv1.Release) string {
	if len(rels) == 0 {
		return ""
	}
	r := rels[0]
	if c := contentCommit(r); c != r.GetCommit() {
		return fmt.Sprintf("%s (content from %s: nothing under the application's paths changed since)", shortCommit(r.GetCommit()), shortCommit(c))
	}
	return shortCommit(r.GetCommit())
}

// contentCommit is the commit whose tree a release's clusters get; a hub
// from before content commits sends none, and its releases get their own.
func contentCommit(r *droverv1.Release) string {
	if c := r.GetContentCommit(); c != "" {
		return c
	}
	return r.GetCommit()
}

// printAppClusters prints one line per placed cluster; a cluster that has
// not reported on the application yet shows "<none>".
func printAppClusters(x *invocation, placed []string, sts []*droverv1.ApplicationStatus) error {
	fmt.Fprintln(x.out(), "Clusters:")
	if len(placed) == 0 {
		fmt.Fprintln(x.out(), "  "+none)
		return nil
	}
	byCluster := make(map[string]*droverv1.ApplicationStatus, len(sts))
	for _, st := range sts {
		byCluster[st.GetCluster()] = st
	}
	names := append([]string(nil), placed...)
	sort.Strings(names)
	t := newIndentedTable(x.out(), "  ", "CLUSTER", "COMMIT", "SYNC", "HEALTH", "MESSAGE")
	for _, n := range names {
		st, ok := byCluster[n]
		if !ok {
			t.row(n, "", "", "", "no status reported yet")
			continue
		}
		t.row(n, shortCommit(st.GetCommit()), st.GetSync().Name(), st.GetHealth().Name(), st.GetMessage())
	}
	return t.flush()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func formatSyncPolicy(p *droverv1.SyncPolicy) string {
	var parts []string
	if p.GetAutomated() {
		parts = append(parts, "automated")
	} else {
		parts = append(parts, "manual")
	}
	if p.GetPrune() {
		parts = append(parts, "prune")
	}
	if p.GetSelfHeal() {
		parts = append(parts, "self-heal")
	}
	if p.GetInterval() != "" {
		parts = append(parts, "interval "+p.GetInterval())
	}
	return strings.Join(parts, ", ")
}

// formatOverrides is one line per override: its selector and what it
// changes.
func formatOverrides(ovs []*droverv1.Override) string {
	lines := make([]string, 0, len(ovs))
	for _, o := range ovs {
		var what []string
		if n := len(o.GetPatches()); n > 0 {
			what = append(what, fmt.Sprintf("%d patch(es)", n))
		}
		if o.GetHelmValues() != "" {
			what = append(what, "Helm values")
		}
		if n := len(o.GetVariables()); n > 0 {
			what = append(what, fmt.Sprintf("variables %s", strings.Join(sortedKeys(o.GetVariables()), ",")))
		}
		lines = append(lines, fmt.Sprintf("%s: %s", orDefault(formatSelector(o.GetSelector()), "(nothing)"), strings.Join(what, "; ")))
	}
	return strings.Join(lines, "\n")
}

func runDeleteApp(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	if err := c.call(ctx, "DELETE", apiPath("applications", pos[0]), nil, nil, &droverv1.DeleteApplicationResponse{}); err != nil {
		return err
	}
	fmt.Fprintf(x.out(), "application/%s deleted\n", pos[0])
	return nil
}

func runAppRefresh(ctx context.Context, x *invocation, args []string) error {
	pos, err := x.parseN(args, 1)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var resp droverv1.RefreshApplicationResponse
	if err := c.call(ctx, "POST", apiPath("applications", pos[0], "refresh"), nil, nil, &resp); err != nil {
		return err
	}
	what := "no new release"
	if resp.GetNewRelease() {
		what = "new release"
	}
	fmt.Fprintf(x.out(), "application/%s resolved to %s (%s)\n", pos[0], resp.GetCommit(), what)
	return nil
}
