package main

import (
	"strings"
	"testing"
)

// output is `go test -bench` output of two packages: one where every
// benchmark passed, one where a sub-benchmark failed after others reported.
const output = `goos: linux
goarch: amd64
pkg: github.com/drover-dev/drover/hub/fleet
cpu: AMD EPYC
BenchmarkCompute-2   	  123456	      9876 ns/op	     512 B/op	       7 allocs/op
PASS
ok  	github.com/drover-dev/drover/hub/fleet	3.1s
goos: linux
pkg: github.com/drover-dev/drover/e2e/loadtest
BenchmarkHub/Memory/1000-2         	       1	12000000000 ns/op	        31.25 KiB/agent	     80000 rss-KiB
    bench_test.go:120: hub RSS idle 48000 KiB, with 1000 agents 80000 KiB: 31.2 KiB per agent
BenchmarkHub/CPU-2                 	       1	90000000000 ns/op	        31.50 hub-cpu-%	        12.00 loadtool-cpu-%	      1000 agents
BenchmarkHub/Ingest-2              	       1	80000000000 ns/op	      1000 agents	     21000 resources-stored/s	     22000 resources-sent/s	         0 statuses-lost
BenchmarkHub/ReconnectStorm-2      	       1	70000000000 ns/op	      1000 agents	       998 acked-current	      1000 statuses-sent	      1000 statuses-stored	        12.5 all-resynced-s
--- FAIL: BenchmarkHub/Fanout
    bench_test.go:200: 12 of 10000 agents not holding the new release after 3m0s
--- FAIL: BenchmarkHub
FAIL
FAIL	github.com/drover-dev/drover/e2e/loadtest	400.2s
FAIL
`

func TestTable(t *testing.T) {
	res, err := parse(strings.NewReader(output))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := printTable(&b, res); err != nil {
		t.Fatal(err)
	}
	table := b.String()
	t.Log("\n" + table)
	for _, tc := range []struct {
		name string
		// row is the start of a line and want what it must contain.
		row, want string
	}{
		{"budget met", "hub memory per idle agent, 1,000 agents", "31.2 KiB/agent"},
		{"budget met bound", "hub memory per idle agent, 1,000 agents", "≤ 40"},
		{"budget met verdict", "hub memory per idle agent, 1,000 agents", " ok "},
		{"budget missed", "hub CPU, 1,000 agents", "31.5 hub-cpu-%"},
		{"budget missed verdict", "hub CPU, 1,000 agents", "OVER BUDGET"},
		{"failed benchmark, fleet size unknown", "fan-out to N agents, p99", "FAILED"},
		{"command", "hub CPU, 1,000 agents", "go test -run '^$' -bench '^BenchmarkHub$/^CPU$' ./e2e/loadtest/"},
		{"unbudgeted custom metric", "BenchmarkHub/CPU loadtool-cpu-%", "12 loadtool-cpu-%"},
		{"unbudgeted custom metric of a budgeted benchmark", "BenchmarkHub/Memory/1000 rss-KiB", "80000 rss-KiB"},
		{"standard metrics of a plain benchmark", "BenchmarkCompute ns/op", "9876 ns/op"},
		{"package path relative", "BenchmarkCompute allocs/op", "./hub/fleet/"},
		{"failures listed", "FAILED:", "BenchmarkHub/Fanout, BenchmarkHub, e2e/loadtest"},
		{"count out of a total, short", "reconnect storm: agents ACKed == the hub's current version", "998/1000 acked-current"},
		{"count out of a total, short verdict", "reconnect storm: agents ACKed == the hub's current version", "NOT ALL"},
		{"count out of a total, all", "reconnect storm: statuses resent on the new streams, stored/sent", "1000/1000 statuses-stored  all"},
		{"count out of a total, all verdict", "reconnect storm: statuses resent on the new streams, stored/sent", " ok "},
		{"stored rate", "status ingest, 1,000 agents", "21000 resources-stored/s"},
		{"ran without a budgeted metric", "reconnect storm: assignments sent again", "NOT REPORTED"},
		{"missing metrics listed", "NOT REPORTED:", "BenchmarkHub/ReconnectStorm assignments-resent"},
		{"the sent rate beside it, unbudgeted", "BenchmarkHub/Ingest resources-sent/s", "22000 resources-sent/s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := lineStarting(table, tc.row)
			if !strings.Contains(line, tc.want) {
				t.Errorf("row %q is %q, want it to contain %q", tc.row, line, tc.want)
			}
		})
	}
	for _, absent := range []string{"BenchmarkHub/CPU ns/op", "BenchmarkHub/Memory/1000 ns/op", "BenchmarkHub/ReconnectStorm agents", "BenchmarkHub/ReconnectStorm statuses-sent", "dashboard overview"} {
		if line := lineStarting(table, absent); line != "" {
			t.Errorf("row %q: want none (the standard units of a benchmark with its own, or not run), got %q", absent, line)
		}
	}
	if len(res.failed) == 0 || len(res.unreported) == 0 {
		t.Errorf("failed %v, unreported %v: want both, so the command exits 1", res.failed, res.unreported)
	}
}

func TestNoFailures(t *testing.T) {
	res, err := parse(strings.NewReader("pkg: github.com/drover-dev/drover/hub/store\nBenchmarkWriteStatuses-2  3  100 ns/op  25000 resources/s\nok  \tgithub.com/drover-dev/drover/hub/store\t2s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.failed) != 0 || len(res.list) != 1 || res.list[0].values["resources/s"] != 25000 {
		t.Errorf("parsed %+v, failed %v: want one result, no failures", res.list, res.failed)
	}
}

func lineStarting(table, prefix string) string {
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}
