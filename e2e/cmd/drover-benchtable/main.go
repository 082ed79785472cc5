// Command drover-benchtable reads `go test -bench` output and prints one
// table: each figure, what was measured, its budget (for the figures that
// have one) and the command that reproduces it. Figures
// without a budget follow, so every benchmark that ran appears. Benchmarks
// and packages that failed are listed after the table, and the command
// then exits 1: `make bench` tees its benchmark output to a file and runs
// this on it, so the table is printed even when a benchmark fails.
//
//	drover-benchtable .cache/bench.txt
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
)

// modulePath is stripped from package paths to make commands relative to
// the repository root.
const modulePath = "github.com/drover-dev/drover/"

// budget is a figure with a bound. The benchmark names leave out the
// -GOMAXPROCS suffix. To follow a benchmark that renames a sub-benchmark
// or a metric, change its row here: a budgeted benchmark that ran without
// reporting the row's metric is flagged NOT REPORTED and fails the command,
// so a rename cannot silently drop a budget from the table.
type budget struct {
	// figure says what is measured; "{agents}" is replaced by the
	// benchmark's "agents" metric, the fleet size it measured.
	figure string
	pkg    string
	bench  string
	unit   string
	// outOf, when set, makes the figure a count out of the benchmark's
	// outOf metric ("9998/10000"), and the budget is all of it; atMost and
	// bound are then unused.
	outOf string
	// atMost bounds the figure from above; otherwise from below.
	atMost bool
	bound  float64
}

// budgets are Drover's, on a two-core machine, in the order printed.
var budgets = []budget{
	{figure: "hub memory per idle agent, 1,000 agents", pkg: "e2e/loadtest", bench: "BenchmarkHub/Memory/1000", unit: "KiB/agent", atMost: true, bound: 40},
	{figure: "hub memory per idle agent, 5,000 agents", pkg: "e2e/loadtest", bench: "BenchmarkHub/Memory/5000", unit: "KiB/agent", atMost: true, bound: 40},
	{figure: "hub memory per idle agent, 10,000 agents", pkg: "e2e/loadtest", bench: "BenchmarkHub/Memory/10000", unit: "KiB/agent", atMost: true, bound: 40},
	{figure: "hub CPU, {agents} agents, 30 s heartbeats (% of one core)", pkg: "e2e/loadtest", bench: "BenchmarkHub/CPU", unit: "hub-cpu-%", atMost: true, bound: 25},
	{figure: "fan-out to {agents} agents, p99", pkg: "e2e/loadtest", bench: "BenchmarkHub/Fanout", unit: "p99-ms", atMost: true, bound: 2000},
	{figure: "status ingest, {agents} agents: resource statuses sent and made current in PostgreSQL, per s", pkg: "e2e/loadtest", bench: "BenchmarkHub/Ingest", unit: "resources-stored/s", bound: 20000},
	{figure: "status ingest: agents whose last report is never stored", pkg: "e2e/loadtest", bench: "BenchmarkHub/Ingest", unit: "statuses-lost", atMost: true, bound: 0},
	{figure: "reconnect storm, {agents} agents: all resynced after SIGKILL (s)", pkg: "e2e/loadtest", bench: "BenchmarkHub/ReconnectStorm", unit: "all-resynced-s", atMost: true, bound: 60},
	{figure: "reconnect storm: assignments sent again", pkg: "e2e/loadtest", bench: "BenchmarkHub/ReconnectStorm", unit: "assignments-resent", atMost: true, bound: 0},
	{figure: "reconnect storm: assignments changed", pkg: "e2e/loadtest", bench: "BenchmarkHub/ReconnectStorm", unit: "assignments-changed", atMost: true, bound: 0},
	{figure: "reconnect storm: agents ACKed == the hub's current version", pkg: "e2e/loadtest", bench: "BenchmarkHub/ReconnectStorm", unit: "acked-current", outOf: "agents"},
	{figure: "reconnect storm: statuses resent on the new streams, stored/sent", pkg: "e2e/loadtest", bench: "BenchmarkHub/ReconnectStorm", unit: "statuses-stored", outOf: "statuses-sent"},
	{figure: "hub CPU, 5% misbehaving of {agents} agents (% of one core)", pkg: "e2e/loadtest", bench: "BenchmarkHub/Misbehaving/CPU", unit: "hub-cpu-%", atMost: true, bound: 25},
	{figure: "fan-out p99, well-behaved 95% beside 5% misbehaving", pkg: "e2e/loadtest", bench: "BenchmarkHub/Misbehaving/Fanout", unit: "p99-ms", atMost: true, bound: 2000},
	{figure: "status writes through the hub's status writer, in-process (resource entries/s)", pkg: "hub/store", bench: "BenchmarkWriteStatuses/writer", unit: "resources/s", bound: 20000},
	{figure: "rollout plan of 10,000 clusters (ns)", pkg: "hub/rollout", bench: "BenchmarkPlan10000", unit: "ns/op", atMost: true, bound: 100e6},
	{figure: "dashboard overview, 10,000 clusters (ns)", pkg: "hub/dashboard", bench: "BenchmarkOverview10000/all", unit: "ns/op", atMost: true, bound: 300e6},
	{figure: "dashboard overview, 10,000 clusters (bytes)", pkg: "hub/dashboard", bench: "BenchmarkOverview10000/all", unit: "html-bytes", atMost: true, bound: 300000},
	{figure: "dashboard overview, 10,000 clusters (bytes sent, gzip)", pkg: "hub/dashboard", bench: "BenchmarkOverview10000/all", unit: "sent-bytes", atMost: true, bound: 60000},
	{figure: "agent process start to synced, 200 objects, time vs kubectl apply --server-side", pkg: "e2e", bench: "BenchmarkAgentVsKubectl", unit: "ratio-agent-kubectl", atMost: true, bound: 0.3},
	{figure: "agent no-op resync vs its first sync, in process (time)", pkg: "e2e", bench: "BenchmarkAgentVsKubectl", unit: "ratio-sync-noop", atMost: true, bound: 0.1},
	{figure: "first apply of 202 objects, Drover vs Flux's ssa ApplyAllStaged (median time ratio)", pkg: "agent/apply", bench: "BenchmarkApplyVsFlux", unit: "ratio-drover-flux", atMost: true, bound: 0.7},
	{figure: "no-op resync of 202 objects vs their first apply (median time ratio)", pkg: "agent/apply", bench: "BenchmarkApplyVsFlux", unit: "ratio-noop-first", atMost: true, bound: 0.1},
	{figure: "agent resident memory, idle with 10 applications (5 Helm charts), their objects watched (MiB)", pkg: "e2e", bench: "BenchmarkAgentIdleMemory", unit: "rss-MiB", atMost: true, bound: 60},
	{figure: "agent render of a Helm chart of 200 objects (ns)", pkg: "agent/render", bench: "BenchmarkRenderHelmChart", unit: "ns/op", atMost: true, bound: 0.5e9},
	// A person waits for droverctl render: a second is the budget of an
	// interactive command, twice the agent's render for what droverctl
	// adds (its start, the hub's preview, a Git fetch into scratch).
	{figure: "droverctl render of a Helm chart of 200 objects from Git, process start to exit, real hub (ns)", pkg: "e2e", bench: "BenchmarkDroverctlRender", unit: "ns/op", atMost: true, bound: 1e9},
	{figure: "self-heal: hand change to reverted by the agent, interval 1h, p50 (ms)", pkg: "e2e", bench: "BenchmarkSelfHeal", unit: "p50-ms", atMost: true, bound: 5000},
	{figure: "self-heal: hand change to reverted by the agent, interval 1h, p99 (ms)", pkg: "e2e", bench: "BenchmarkSelfHeal", unit: "p99-ms", atMost: true, bound: 5000},
}

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "drover-benchtable: %v\n", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	}
	res, err := parse(in)
	if err != nil {
		fmt.Fprintf(os.Stderr, "drover-benchtable: read benchmark output: %v\n", err)
		os.Exit(2)
	}
	if err := printTable(os.Stdout, res); err != nil {
		fmt.Fprintf(os.Stderr, "drover-benchtable: %v\n", err)
		os.Exit(2)
	}
	if len(res.failed) > 0 || len(res.unreported) > 0 {
		os.Exit(1)
	}
}

// result is one benchmark's figures.
type result struct {
	pkg, bench string
	// metrics in the order reported; units are unique per benchmark.
	units  []string
	values map[string]float64
}

// results is everything read from benchmark output.
type results struct {
	list []*result
	// failed names failed benchmarks ("BenchmarkHub/CPU") and packages
	// that failed as a whole ("e2e/loadtest"), in the order seen.
	failed []string
	// benchFailed tells the packages with a failed benchmark named in the
	// output; a package failed without one (a panic, a timeout, a build
	// error) did not finish what it was asked to run.
	benchFailed map[string]bool
	// unreported lists budget rows whose benchmark ran without reporting
	// the row's metrics ("BenchmarkHub/Ingest resources-stored/s"), set by
	// printTable.
	unreported []string
}

func (r *results) find(pkg, bench string) *result {
	for _, x := range r.list {
		if x.pkg == pkg && x.bench == bench {
			return x
		}
	}
	return nil
}

func (r *results) didFail(name string) bool {
	for _, f := range r.failed {
		if f == name {
			return true
		}
	}
	return false
}

var (
	// BenchmarkX/sub-2   	       1	1234 ns/op	  56.7 unit ...
	resultLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)
	failLine   = regexp.MustCompile(`^\s*--- FAIL: (Benchmark\S+)`)
	pkgFail    = regexp.MustCompile(`^FAIL\s+(\S+)`)
)

// parse reads the standard benchmark format: "pkg:" lines name the package
// of the results that follow.
func parse(r io.Reader) (*results, error) {
	res := &results{benchFailed: make(map[string]bool)}
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), modulePath)
			continue
		}
		if m := failLine.FindStringSubmatch(line); m != nil {
			res.addFailed(m[1])
			res.benchFailed[pkg] = true
			continue
		}
		if m := pkgFail.FindStringSubmatch(line); m != nil {
			res.addFailed(strings.TrimPrefix(m[1], modulePath))
			continue
		}
		m := resultLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		if len(fields)%2 != 0 {
			continue // a benchmark's log line that looks like a result
		}
		x := &result{pkg: pkg, bench: m[1], values: make(map[string]float64)}
		for i := 0; i < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				x = nil
				break
			}
			x.units = append(x.units, fields[i+1])
			x.values[fields[i+1]] = v
		}
		if x != nil {
			res.list = append(res.list, x)
		}
	}
	return res, sc.Err()
}

func (r *results) addFailed(name string) {
	if !r.didFail(name) {
		r.failed = append(r.failed, name)
	}
}

// command reproduces one benchmark: each level of its name anchored.
func command(pkg, bench string) string {
	parts := strings.Split(bench, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return fmt.Sprintf("go test -run '^$' -bench '%s' ./%s/", strings.Join(parts, "/"), pkg)
}

// standardUnits are the testing package's own; they are shown only for
// benchmarks that report nothing else.
var standardUnits = map[string]bool{"ns/op": true, "B/op": true, "allocs/op": true, "MB/s": true}

func printTable(w io.Writer, res *results) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmeasured\tbudget\tverdict\tcommand")
	budgeted := make(map[string]bool)
	res.unreported = nil
	for _, bg := range budgets {
		budgeted[bg.pkg+" "+bg.bench+" "+bg.unit] = true
		if bg.outOf != "" {
			budgeted[bg.pkg+" "+bg.bench+" "+bg.outOf] = true
		}
		x := res.find(bg.pkg, bg.bench)
		measured, bound, verdict, ok := judge(bg, x)
		switch {
		case ok:
		case res.didFail(bg.bench) || res.didFail(bg.pkg) && !res.benchFailed[bg.pkg]:
			measured, verdict = "FAILED", "-"
		case x != nil:
			// It ran and passed, without the metric: renamed or dropped.
			measured, verdict = "NOT REPORTED", "-"
			res.unreported = append(res.unreported, bg.bench+" "+bg.unit)
		default:
			continue // not selected by BENCH
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", figure(bg, x), measured, bound, verdict, command(bg.pkg, bg.bench))
	}
	for _, x := range res.list {
		custom := false
		for _, u := range x.units {
			custom = custom || !standardUnits[u]
		}
		for _, u := range x.units {
			if budgeted[x.pkg+" "+x.bench+" "+u] || custom && standardUnits[u] {
				continue
			}
			fmt.Fprintf(tw, "%s %s\t%s\t-\t\t%s\n", x.bench, u, format(x.values[u])+" "+u, command(x.pkg, x.bench))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.unreported) > 0 {
		fmt.Fprintf(w, "\nNOT REPORTED: %s (the benchmark ran; update the budgets in e2e/cmd/drover-benchtable to its metrics)\n", strings.Join(res.unreported, ", "))
	}
	if len(res.failed) > 0 {
		_, err := fmt.Fprintf(w, "\nFAILED: %s (their output is above the table)\n", strings.Join(res.failed, ", "))
		return err
	}
	if len(res.list) == 0 {
		return errors.New("no benchmark results in the input (does BENCH match any benchmark?)")
	}
	return nil
}

// judge reads bg's figure from x: what was measured, the budget, and the
// verdict; ok is false when x did not report it.
func judge(bg budget, x *result) (measured, bound, verdict string, ok bool) {
	v, ok := lookup(x, bg.unit)
	if bg.outOf != "" {
		total, okTotal := lookup(x, bg.outOf)
		if !ok || !okTotal {
			return "", "all", "", false
		}
		verdict = "ok"
		if v != total || total == 0 {
			verdict = "NOT ALL"
		}
		return format(v) + "/" + format(total) + " " + bg.unit, "all", verdict, true
	}
	bound = "≥ " + format(bg.bound)
	if bg.atMost {
		bound = "≤ " + format(bg.bound)
	}
	if !ok {
		return "", bound, "", false
	}
	verdict = "ok"
	if bg.atMost && v > bg.bound || !bg.atMost && v < bg.bound {
		verdict = "OVER BUDGET"
	}
	return format(v) + " " + bg.unit, bound, verdict, true
}

// figure is bg's description, with the fleet size x measured.
func figure(bg budget, x *result) string {
	n, ok := lookup(x, "agents")
	size := "N"
	if ok {
		size = thousands(int64(n))
	}
	return strings.ReplaceAll(bg.figure, "{agents}", size)
}

// thousands prints n with commas: 10,000.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func lookup(x *result, unit string) (float64, bool) {
	if x == nil {
		return 0, false
	}
	v, ok := x.values[unit]
	return v, ok
}

// format prints v with no more decimals than its size warrants.
func format(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000 || v == math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}
