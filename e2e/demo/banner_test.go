package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// step is one command the banner gives the user.
type step struct {
	// comment goes on a "# ..." line above the command; empty for none.
	comment string
	// cmd is a shell command line, as typed in the directory make demo
	// runs in.
	cmd string
	// untested marks what TestDemo does not run: commands that need tools
	// the tests do not (kubectl, curl, watch) or that never end.
	untested bool
}

// banner is what make demo prints once everything runs.
type banner struct {
	text  string
	steps []step // every command in the text, in order
}

// tested returns the steps TestDemo runs.
func (b banner) tested() []step {
	var out []step
	for _, s := range b.steps {
		if !s.untested {
			out = append(out, s)
		}
	}
	return out
}

// banner says what runs, where, and what to try; commit is what the prod
// clusters run now.
func (d *demo) banner(commit string) banner {
	ctl := shq(shown(d.bins.Ctl))
	var prod1 string
	for _, c := range d.clusters {
		if c.Name == prodClusters[0] {
			prod1 = shq(c.Kubeconfig)
		}
	}
	clone := shq(d.clone)
	kubectl := "kubectl --kubeconfig " + prod1 + " -n web "

	look := []step{
		{comment: "droverctl's login to this hub, with the admin token", cmd: "export DROVER_CONFIG=" + shq(d.ctlConfig)},
		{comment: "the fleet: status, Kubernetes version, agent, labels", cmd: ctl + " get clusters -o wide"},
		{cmd: ctl + " get apps"},
		{comment: "web's source, releases, and its commit, sync and health on each cluster", cmd: ctl + " describe app web"},
		{comment: "the history: registrations, releases, syncs", cmd: ctl + " get events"},
		{comment: "the workload itself (needs kubectl)", cmd: kubectl + "get deploy,pods -o wide", untested: true},
		{comment: "the JSON API, as scripts use it", cmd: `curl -s -H "Authorization: Bearer $(cat ` + shq(d.tokenFile()) + `)" ` + d.hubURL() + "/api/v1/applications/web", untested: true},
	}
	rollout := []step{
		{comment: "change the image tag in your clone of the repository, commit and push", cmd: "sed -i 's/image: " + image + "/image: " + newImage + "/' " + shq(filepath.Join(d.clone, "apps", "web", "deployment.yaml"))},
		{cmd: "git -C " + clone + " commit -qam 'web on " + newImage + "'"},
		{cmd: "git -C " + clone + " push -q"},
		{comment: fmt.Sprintf("have the hub resolve main now, rather than at its next poll (every %v)", hubPollInterval), cmd: ctl + " app refresh web"},
		{comment: "prod-1 and prod-2 move to the new commit; staging, env=staging, has nothing", cmd: "watch -n 2 " + ctl + " describe app web", untested: true},
	}
	drift := []step{
		{comment: "scale web by hand on prod-1: its agent puts back 2 replicas within seconds (it watches what it applied)", cmd: kubectl + "scale deploy nginx --replicas 5", untested: true},
		{cmd: kubectl + "get deploy nginx -w", untested: true},
	}

	var w strings.Builder
	rule := strings.Repeat("─", 78)
	fmt.Fprintf(&w, "\n%s\n Drover demo is running. Ctrl-C here stops it and every process it started.\n%s\n\n", rule, rule)
	row := func(label, format string, args ...any) {
		fmt.Fprintf(&w, "%-15s%s\n", label, fmt.Sprintf(format, args...))
	}
	row("Hub", "drover-hub, pid %d, with its embedded PostgreSQL (data in %s)", d.hub.Pid(), d.dataDir())
	row("  JSON API", "%s/api/v1/   (health: %s/healthz)", d.hubURL(), d.hubURL())
	row("  agents", "connect to %s (gRPC, mutual TLS)", d.agentAddr)
	row("  dashboard", "%s/   (sign in with the admin token below)", d.hubURL())
	row("  admin token", "%s", d.token)
	row("", "(also in %s)", d.tokenFile())
	fmt.Fprintln(&w)

	fmt.Fprintln(&w, "Clusters       local Kubernetes from the test bed, each with its drover-agent")
	tw := tabwriter.NewWriter(&w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tLABELS\tAGENT PID\tKUBECONFIG")
	for i, c := range d.clusters {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\n", c.Name, demoClusters[i].labels, d.agents[c.Name].Pid(), c.Kubeconfig)
	}
	tw.Flush()
	fmt.Fprintln(&w)

	row("Git", "%s   (apps/web: an nginx Deployment and Service)", d.repo.URL)
	row("  your clone", "%s   (push from it)", d.clone)
	fmt.Fprintln(&w)
	row("Application", "web, defined in %s", d.appFile)
	row("", "apps/web at main, on env=prod; automated, prune, self-heal, every %s", syncInterval)
	row("", "now: %s, Synced and Healthy at %.7s on %s; nothing on staging", image, commit, strings.Join(prodClusters, " and "))
	fmt.Fprintln(&w)
	row("Logs", "%s", filepath.Join(d.dir, "*.log"))

	section := func(title string, steps []step) {
		fmt.Fprintf(&w, "\n%s\n\n", title)
		for _, s := range steps {
			if s.comment != "" {
				fmt.Fprintf(&w, "  # %s\n", s.comment)
			}
			fmt.Fprintf(&w, "  %s\n", s.cmd)
		}
	}
	section("Look around, in another terminal in this directory:", look)
	section(fmt.Sprintf("Roll out a new image (%s to %s) through Git:", image, newImage), rollout)
	section("Watch self-heal undo a hand-made change:", drift)
	fmt.Fprintf(&w, "\n%s\n", rule)

	return banner{text: w.String(), steps: append(append(look, rollout...), drift...)}
}

// shown is path as the user types it: relative to the current directory
// when inside it (bin/droverctl, from the checkout), else absolute.
func shown(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || !filepath.IsLocal(rel) {
		return path
	}
	if !strings.ContainsRune(rel, filepath.Separator) {
		rel = "./" + rel // a bare name would be looked up in PATH
	}
	return rel
}

// shq quotes s for a POSIX shell, when it needs quoting.
func shq(s string) string {
	safe := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@%+", r)
	}
	if s != "" && strings.IndexFunc(s, func(r rune) bool { return !safe(r) }) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
