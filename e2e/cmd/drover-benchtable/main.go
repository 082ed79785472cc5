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
// -GOMAXPROCS suffix.
type budget struct {
	figure string
	pkg    string
	bench  string
	unit   string
	// atMost bounds the figure from above; otherwise from below.
	atMost bool
	bound  float64
}

// budgets are Drover's, on a two-core machine, in the order printed.
var budgets = []budget{
	{"hub memory per idle agent, 1,000 agents", "e2e/loadtest", "BenchmarkHub/Memory/1000", "KiB/agent", true, 40},
	{"hub memory per idle agent, 5,000 agents", "e2e/loadtest", "BenchmarkHub/Memory/5000", "KiB/agent", true, 40},
	{"hub memory per idle agent, 10,000 agents", "e2e/loadtest", "BenchmarkHub/Memory/10000", "KiB/agent", true, 40},
	{"hub CPU, 10,000 agents, 30 s heartbeats (% of one core)", "e2e/loadtest", "BenchmarkHub/CPU", "hub-cpu-%", true, 25},
	{"fan-out to 10,000 agents, p99", "e2e/loadtest", "BenchmarkHub/Fanout", "p99-ms", true, 2000},
	{"status ingest (resource rows/s into PostgreSQL)", "e2e/loadtest", "BenchmarkHub/Ingest", "resource-rows/s", false, 20000},
	{"status ingest: last reports never stored", "e2e/loadtest", "BenchmarkHub/Ingest", "statuses-lost", true, 0},
	{"reconnect storm, 10,000 agents: all resynced", "e2e/loadtest", "BenchmarkHub/ReconnectStorm", "all-resynced-s", true, 60},
	{"reconnect storm: assignments sent again", "e2e/loadtest", "BenchmarkHub/ReconnectStorm", "assignments-resent", true, 0},
	{"reconnect storm: assignments changed", "e2e/loadtest", "BenchmarkHub/ReconnectStorm", "assignments-changed", true, 0},
	{"reconnect storm: last statuses not stored", "e2e/loadtest", "BenchmarkHub/ReconnectStorm", "statuses-lost", true, 0},
	{"hub CPU, 5% misbehaving agents (% of one core)", "e2e/loadtest", "BenchmarkHub/Misbehaving/CPU", "hub-cpu-%", true, 25},
	{"fan-out p99, well-behaved 95% beside 5% misbehaving", "e2e/loadtest", "BenchmarkHub/Misbehaving/Fanout", "p99-ms", true, 2000},
	{"status writes into PostgreSQL, in-process, COPY (resource entries/s)", "hub/store", "BenchmarkWriteStatuses/copy", "resources/s", false, 20000},
	{"rollout plan of 10,000 clusters (ns)", "hub/rollout", "BenchmarkPlan10000", "ns/op", true, 100e6},
	{"dashboard overview, 10,000 clusters (ns)", "hub/dashboard", "BenchmarkOverview10000/all", "ns/op", true, 300e6},
	{"dashboard overview, 10,000 clusters (bytes)", "hub/dashboard", "BenchmarkOverview10000/all", "html-bytes", true, 300000},
	{"agent first apply of 200 objects, time vs kubectl apply --server-side", "e2e", "BenchmarkAgentVsKubectl", "ratio-first", true, 0.3},
	{"agent no-op resync, time vs its first apply", "e2e", "BenchmarkAgentVsKubectl", "ratio-noop", true, 0.1},
	{"agent resident memory, idle with 10 applications (MiB)", "e2e", "BenchmarkAgentIdleMemory", "rss-MiB", true, 60},
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
	if len(res.failed) > 0 {
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
	for _, bg := range budgets {
		budgeted[bg.pkg+" "+bg.bench+" "+bg.unit] = true
		x := res.find(bg.pkg, bg.bench)
		bound := "≥ " + format(bg.bound)
		if bg.atMost {
			bound = "≤ " + format(bg.bound)
		}
		var measured, verdict string
		switch v, ok := lookup(x, bg.unit); {
		case ok:
			measured, verdict = format(v)+" "+bg.unit, "ok"
			if bg.atMost && v > bg.bound || !bg.atMost && v < bg.bound {
				verdict = "OVER BUDGET"
			}
		case res.didFail(bg.bench) || res.didFail(bg.pkg) && !res.benchFailed[bg.pkg]:
			measured, verdict = "FAILED", "-"
		default:
			continue // not selected by BENCH
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", bg.figure, measured, bound, verdict, command(bg.pkg, bg.bench))
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
	if len(res.failed) > 0 {
		_, err := fmt.Fprintf(w, "\nFAILED: %s (their output is above the table)\n", strings.Join(res.failed, ", "))
		return err
	}
	if len(res.list) == 0 {
		return errors.New("no benchmark results in the input (does BENCH match any benchmark?)")
	}
	return nil
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
