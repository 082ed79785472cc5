// Command drover-loadtest runs N simulated Drover agents in one process
// against a hub, each with its own registered identity and mTLS stream
// (see package e2e/loadtest), and prints what they received: per round of
// assignments, how many agents got it and how its arrivals spread.
//
//	drover-loadtest --hub 127.0.0.1:8443 --hub-ca data/ca.crt \
//	    --join-token "$TOKEN" --agents 10000 --duration 5m
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/drover-dev/drover/e2e/loadtest"
)

type options struct {
	cfg      loadtest.Config
	caFile   string
	duration time.Duration
	jsonOut  bool
	logLevel string
}

func main() {
	var o options
	fs := flag.NewFlagSet("drover-loadtest", flag.ExitOnError)
	o.register(fs)
	_ = fs.Parse(os.Args[1:])

	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "drover-loadtest: --log-level %q: want debug, info, warn or error\n", o.logLevel)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, logger, os.Stdout); err != nil {
		logger.Error("load test failed", "err", err)
		os.Exit(1)
	}
}

func (o *options) register(fs *flag.FlagSet) {
	o.cfg.HubAddr = "127.0.0.1:8443"
	fs.Func("hub", "the hub's agent endpoint, host:port, or its replicas' separated by commas: the agents are spread over them and fail over between them (default 127.0.0.1:8443)", func(v string) error {
		o.cfg.HubAddrs = strings.Split(v, ",")
		o.cfg.HubAddr = o.cfg.HubAddrs[0]
		return nil
	})
	fs.StringVar(&o.cfg.ServerName, "server-name", "", "name the hub's serving certificate must carry (default: the host of the first --hub)")
	fs.StringVar(&o.caFile, "hub-ca", "", "PEM file of the hub's CA (its data directory's ca.crt)")
	token := os.Getenv("DROVER_JOIN_TOKEN")
	fs.StringVar(&o.cfg.JoinToken, "join-token", token, "a reusable join token (env DROVER_JOIN_TOKEN, which keeps it out of the process list)")
	fs.IntVar(&o.cfg.Agents, "agents", 100, "number of simulated agents")
	fs.StringVar(&o.cfg.NamePrefix, "name-prefix", "load", "prefix of the cluster names; runs against one hub need different ones")
	fs.IntVar(&o.cfg.ResourcesPerApp, "resources-per-app", 10, "resources in each application status")
	fs.DurationVar(&o.cfg.Heartbeat, "heartbeat", 30*time.Second, "heartbeat interval of each agent (jittered ±10%)")
	fs.DurationVar(&o.cfg.ApplyLatency, "apply-latency", 100*time.Millisecond, "simulated apply time (jittered ±20%)")
	fs.Float64Var(&o.cfg.FailRate, "fail-rate", 0, "probability, 0 to 1, that an apply fails and is NACKed")
	fs.DurationVar(&o.cfg.StatusInterval, "status-interval", 0, "send a fresh full status report this often (jittered ±10%); 0 reports after applies only")
	fs.Float64Var(&o.cfg.Misbehaving, "misbehaving", 0, "share, 0 to 1, of agents that break the protocol (see --modes)")
	fs.Func("modes", fmt.Sprintf("comma-separated misbehaviours the misbehaving agents take in turn (default all: %v)", loadtest.Modes), func(v string) error {
		for m := range strings.SplitSeq(v, ",") {
			o.cfg.Modes = append(o.cfg.Modes, loadtest.Mode(strings.TrimSpace(m)))
		}
		return nil
	})
	fs.Float64Var(&o.cfg.ConnectRate, "connect-rate", 200, "new agents per second at start")
	fs.IntVar(&o.cfg.Parallel, "parallel", 32, "registrations in flight at start")
	fs.DurationVar(&o.duration, "duration", 0, "how long to run once every agent is connected; 0 runs until interrupted")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
}

func run(ctx context.Context, o options, logger *slog.Logger, out io.Writer) error {
	if o.caFile == "" {
		return errors.New("--hub-ca: required: the PEM file of the hub's CA")
	}
	ca, err := os.ReadFile(o.caFile)
	if err != nil {
		return fmt.Errorf("--hub-ca: %w", err)
	}
	o.cfg.CAPEM = ca

	start := time.Now()
	fl, err := loadtest.Start(ctx, o.cfg, logger)
	if err != nil {
		return err
	}
	defer fl.Close()
	logger.Info("every agent registered and connecting", "agents", o.cfg.Agents, "took", time.Since(start).Round(time.Millisecond))

	var done <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		done = t.C
	}
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-done:
			running = false
		case <-progress.C:
			s := loadtest.Summarize(loadtest.WellBehavedOnly(fl.Agents()))
			logger.Info("progress", "connected", s.Connected, "rounds", len(s.Rounds), "reconnects", s.Reconnects, "duplicates", s.Duplicates, "nacks", s.NACKs)
		}
	}
	sum := loadtest.Summarize(loadtest.WellBehavedOnly(fl.Agents()))
	if o.jsonOut {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	return printSummary(out, sum)
}

func printSummary(w io.Writer, s loadtest.Summary) error {
	_, err := fmt.Fprintf(w, "agents %d  connected %d  reconnects %d  duplicates %d  nacks %d  (well-behaved agents only)\n",
		s.Agents, s.Connected, s.Reconnects, s.Duplicates, s.NACKs)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%-6s %-8s %-30s %10s %10s %10s\n", "round", "agents", "first arrival", "p50", "p99", "max")
	for _, r := range s.Rounds {
		fmt.Fprintf(w, "%-6d %-8d %-30s %10v %10v %10v\n", r.N, r.Agents, r.First.Format(time.RFC3339Nano),
			time.Duration(r.P50).Round(time.Millisecond), time.Duration(r.P99).Round(time.Millisecond), time.Duration(r.Max).Round(time.Millisecond))
	}
	return nil
}
