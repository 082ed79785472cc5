// Package ctl is droverctl, the operators' kubectl-like client of the hub's
// JSON admin API (/api/v1/..., bearer token). It holds everything but the
// process setup, so tests run the CLI in-process against a real hub.
//
// The command line is
//
//	droverctl [global flags] COMMAND [RESOURCE] [flags and arguments]
//
// Flags may come before, between or after the arguments; "--" ends them.
// The global flags --server, --token and --config (env DROVER_SERVER,
// DROVER_TOKEN, DROVER_CONFIG) are accepted everywhere and win over the
// config file that `droverctl login` writes.
//
// Output: tables for people; with -o json the hub's response message as
// protojson (a list command prints the one List...Response it assembled
// from every page, e.g. {"clusters": [...]}), with -o yaml the same as YAML.
// Exit codes: 0 success, 1 the command failed (the hub refused it or could
// not be reached), 2 a wrong command line.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// CLI is the environment of one droverctl run. Tests fill it to run
// commands in-process with their own streams, environment and clock.
type CLI struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads the environment: DROVER_SERVER, DROVER_TOKEN,
	// DROVER_CONFIG, XDG_CONFIG_HOME and HOME.
	Getenv func(string) string
	// Now is the clock ages and other relative times are computed from.
	Now func() time.Time
	// HTTPClient talks to the hub; nil means a client with requestTimeout.
	HTTPClient *http.Client
	// PageSize is how many objects one list request asks for; 0 means
	// defaultPageSize. Lists are paged through to the end either way.
	PageSize int
}

// defaultPageSize is half the hub's largest page.
const defaultPageSize = 500

func (c *CLI) pageSize() int {
	if c.PageSize > 0 {
		return c.PageSize
	}
	return defaultPageSize
}

// Main runs droverctl with the process's environment and returns its exit
// code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &CLI{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, Now: time.Now}
	return c.Run(ctx, args)
}

// Run runs one command line (without the program name) and returns the
// exit code. Errors go to Stderr.
func (c *CLI) Run(ctx context.Context, args []string) int {
	return c.report(c.run(ctx, args))
}

// command is one droverctl command.
type command struct {
	// name is the words that select the command, e.g. "get clusters".
	name string
	// args is the usage after the name, e.g. "NAME [-o json]".
	args    string
	summary string
	run     func(ctx context.Context, x *invocation, args []string) error
}

func (cmd *command) usage() string {
	if cmd.args == "" {
		return "droverctl " + cmd.name
	}
	return "droverctl " + cmd.name + " " + cmd.args
}

// commands is every command, in the order `droverctl help` lists them.
var commands = []*command{
	{"login", "--server URL [--token TOKEN]", "check an API token and save it with the hub's URL (the token is read from stdin without --token)", runLogin},
	{"status", "[-o json|yaml]", "show the hub's health", runStatus},
	{"version", "", "show droverctl's version", runVersion},

	{"get clusters", "[-l SELECTOR] [-o wide|json|yaml]", "list clusters", runGetClusters},
	{"describe cluster", "NAME", "show a cluster with its applications", runDescribeCluster},
	{"label cluster", "NAME KEY=VALUE... KEY-...", "set (KEY=VALUE) and remove (KEY-) a cluster's labels", runLabelCluster},
	{"revoke cluster", "NAME", "revoke a cluster's certificate and disconnect its agent", runRevokeCluster},
	{"delete cluster", "NAME", "forget a cluster; its agent must register again", runDeleteCluster},

	{"apply", "-f FILE|-", "create or update the Applications and cluster labels a YAML file declares", runApply},
	{"get apps", "[-o wide|json|yaml]", "list applications with their fleet-wide state", runGetApps},
	{"describe app", "NAME", "show an application: source, releases and its state on every cluster", runDescribeApp},
	{"delete app", "NAME", "delete an application", runDeleteApp},
	{"app refresh", "NAME", "resolve an application's ref now", runAppRefresh},
	{"render", "APP --cluster NAME [--commit REV] [--values-only] [--username USER --password-stdin]", "print the objects a cluster would apply for an application, rendered here with the agent's code", runRender},

	{"rollout status", "APP [-o wide|json|yaml]", "show where the rollout of an application's release stands, wave by wave", runRolloutStatus},
	{"rollout pause", "APP", "hold every cluster of a rollout where it is", runRolloutControl("pause")},
	{"rollout resume", "APP", "continue a paused rollout, or retry the failed clusters of a failed one", runRolloutControl("resume")},
	{"rollout promote", "APP", "approve the wave waiting for approval", runRolloutControl("promote")},
	{"rollout abort", "APP", "end a rollout; every cluster keeps what it runs until the next release", runRolloutControl("abort")},
	{"rollout rollback", "APP", "move every cluster back to the last release that completed before this one", runRolloutControl("rollback")},

	{"get replicas", "[-o wide|json|yaml]", "list the hub replicas: state, agent streams and background jobs held", runGetReplicas},

	{"get events", "[--cluster NAME] [--app NAME] [--kind PREFIX] [--limit N] [-o json|yaml]", "list the event history, newest first", runGetEvents},

	{"token create", "[--ttl 24h] [--reusable] [--labels K=V,...] [--description TEXT]", "create a join token for registering clusters (printed once)", runTokenCreate},
	{"token list", "[-o json|yaml]", "list join tokens", runTokenList},
	{"token delete", "ID", "delete a join token", runTokenDelete},

	{"apitoken create", "NAME --role admin|viewer [--ttl DURATION]", "create an API token (printed once)", runAPITokenCreate},
	{"apitoken list", "[-o json|yaml]", "list API tokens", runAPITokenList},
	{"apitoken delete", "ID", "delete an API token", runAPITokenDelete},

	{"repo set", "URL (--username USER --password-stdin [--ca-file FILE] | --ssh-key-file FILE --known-hosts-file FILE | --ca-file FILE)", "store credentials for a Git or Helm repository or an OCI registry", runRepoSet},
	{"repo list", "[-o json|yaml]", "list repositories with stored credentials", runRepoList},
	{"repo delete", "URL", "delete a repository's credentials", runRepoDelete},
}

// resourceAliases maps the spellings of a resource to the one the commands
// table uses, kubectl-style: singular, plural and short forms all work.
var resourceAliases = map[string]string{
	"cluster": "cluster", "clusters": "cluster", "cl": "cluster",
	"app": "app", "apps": "app", "application": "app", "applications": "app",
	"event": "event", "events": "event", "ev": "event",
	"replica": "replica", "replicas": "replica",
}

func sameWord(typed, want string) bool {
	if a, ok := resourceAliases[typed]; ok {
		return a == resourceAliases[want]
	}
	return typed == want
}

// lookup finds the command args start with and returns it with the
// remaining arguments.
func lookup(args []string) (*command, []string, error) {
	verb := args[0]
	var known bool
	var resources []string
	for _, cmd := range commands {
		words := strings.Fields(cmd.name)
		if words[0] != verb {
			continue
		}
		known = true
		if len(words) == 1 {
			return cmd, args[1:], nil
		}
		resources = append(resources, words[1])
		if len(args) > 1 && sameWord(args[1], words[1]) {
			return cmd, args[2:], nil
		}
	}
	switch {
	case !known:
		return nil, nil, &usageError{msg: fmt.Sprintf("unknown command %q", verb), usage: "droverctl COMMAND [flags]; run 'droverctl help' for the list"}
	case len(args) == 1:
		return nil, nil, &usageError{msg: fmt.Sprintf("%s what? one of: %s", verb, strings.Join(resources, ", ")), usage: "droverctl " + verb + " " + strings.Join(resources, "|")}
	}
	return nil, nil, &usageError{msg: fmt.Sprintf("%s: unknown %q; one of: %s", verb, args[1], strings.Join(resources, ", ")), usage: "droverctl " + verb + " " + strings.Join(resources, "|")}
}

func (c *CLI) run(ctx context.Context, args []string) error {
	g := globalsFromEnv(c.Getenv)
	fs := flag.NewFlagSet("droverctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printHelp(c.Stdout)
			return nil
		}
		return &usageError{msg: err.Error(), usage: "droverctl [--server URL] [--token TOKEN] [--config FILE] COMMAND ..."}
	}
	args = fs.Args()
	if len(args) == 0 {
		c.printHelp(c.Stderr)
		return &usageError{msg: "no command given"}
	}
	if args[0] == "help" {
		c.printHelp(c.Stdout)
		return nil
	}
	cmd, rest, err := lookup(args)
	if err != nil {
		if len(args) > 1 && isHelpFlag(args[1]) { // droverctl get --help
			c.printHelp(c.Stdout)
			return nil
		}
		return err
	}
	x := &invocation{cli: c, cmd: cmd, globals: g}
	x.fs = flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	x.fs.SetOutput(io.Discard)
	x.globals.register(x.fs)
	err = cmd.run(ctx, x, rest)
	if errors.Is(err, flag.ErrHelp) {
		x.printUsage(c.Stdout)
		return nil
	}
	return err
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help"
}

func (c *CLI) printHelp(w io.Writer) {
	fmt.Fprint(w, "droverctl is the command-line client of Drover's hub.\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, cmd := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", cmd.name, cmd.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
Global flags (accepted by every command):
  --server URL     the hub's HTTP address, e.g. http://127.0.0.1:8080 (env DROVER_SERVER)
  --token TOKEN    an API token (env DROVER_TOKEN); prefer 'droverctl login'
  --config FILE    the config file (env DROVER_CONFIG; default $XDG_CONFIG_HOME/drover/config.yaml)

Run 'droverctl COMMAND --help' for a command's flags.
`)
}

// usageError is a wrong command line: it exits 2 and shows the usage.
type usageError struct {
	msg   string
	usage string
}

func (e *usageError) Error() string { return e.msg }

// report prints err the way droverctl shows errors and returns the exit
// code.
func (c *CLI) report(err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	var ae *APIError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(c.Stderr, "error: %s\n", ue.msg)
		if ue.usage != "" {
			fmt.Fprintf(c.Stderr, "usage: %s\n", ue.usage)
		}
		return exitUsage
	case errors.Is(err, context.Canceled):
		// The user interrupted; they know why it stopped.
		return exitError
	case errors.As(err, &ae):
		fmt.Fprintf(c.Stderr, "error: %s\n", err)
		switch ae.HTTPStatus {
		case http.StatusUnauthorized:
			fmt.Fprintln(c.Stderr, "hint: run droverctl login (or pass --token) with a valid API token")
		case http.StatusForbidden:
			fmt.Fprintln(c.Stderr, "hint: your token's role may not do this; ask for an admin token")
		}
		return exitError
	}
	fmt.Fprintf(c.Stderr, "error: %s\n", err)
	return exitError
}

// invocation is one command being run.
type invocation struct {
	cli     *CLI
	cmd     *command
	globals globals
	// fs holds the command's flags, the global ones included.
	fs *flag.FlagSet
}

// parse parses args, flags anywhere among the positional arguments, and
// returns the positional ones.
func (x *invocation) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := x.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, x.usageErrorf("%v", err)
		}
		rest := x.fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseN parses args and insists on exactly n positional arguments.
func (x *invocation) parseN(args []string, n int) ([]string, error) {
	pos, err := x.parse(args)
	if err != nil {
		return nil, err
	}
	if len(pos) != n {
		if n == 0 {
			return nil, x.usageErrorf("unexpected argument %q", pos[0])
		}
		return nil, x.usageErrorf("want %d argument(s), got %d", n, len(pos))
	}
	return pos, nil
}

func (x *invocation) usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), usage: x.cmd.usage()}
}

func (x *invocation) printUsage(w io.Writer) {
	fmt.Fprintf(w, "%s\n\nusage: %s\n", x.cmd.summary, x.cmd.usage())
	var own []*flag.Flag
	x.fs.VisitAll(func(f *flag.Flag) {
		if !isGlobalFlag(f.Name) {
			own = append(own, f)
		}
	})
	if len(own) == 0 {
		return
	}
	sort.Slice(own, func(i, j int) bool { return own[i].Name < own[j].Name })
	fmt.Fprint(w, "\nflags:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	for _, f := range own {
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		fmt.Fprintf(tw, "  %s%s\t%s\n", dash, f.Name, f.Usage)
	}
	tw.Flush()
}

// out and errOut are where a command writes results and diagnostics.
func (x *invocation) out() io.Writer    { return x.cli.Stdout }
func (x *invocation) errOut() io.Writer { return x.cli.Stderr }
func (x *invocation) now() time.Time    { return x.cli.Now() }
