// Package envflag is how drover-hub and drover-agent read their
// configuration: command-line flags, each with a DROVER_... environment
// variable it falls back to. A flag given on the command line wins over its
// variable, and the variable over the built-in default. A variable whose
// value does not parse is an error that names the variable, at parse time,
// rather than a made-up value for Validate to find later.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// FlagSet wraps a flag.FlagSet, remembering each flag's variable.
type FlagSet struct {
	fs  *flag.FlagSet
	env map[string]string // flag name → environment variable
}

// New returns a FlagSet that defines its flags on fs.
func New(fs *flag.FlagSet) *FlagSet {
	return &FlagSet{fs: fs, env: map[string]string{}}
}

func (f *FlagSet) bind(name, env, usage string) string {
	f.env[name] = env
	return usage + " (env " + env + ")"
}

// String defines a string flag whose default is *p.
func (f *FlagSet) String(p *string, name, env, usage string) {
	f.fs.StringVar(p, name, *p, f.bind(name, env, usage))
}

// Int defines an int flag whose default is *p.
func (f *FlagSet) Int(p *int, name, env, usage string) {
	f.fs.IntVar(p, name, *p, f.bind(name, env, usage))
}

// Int64 defines an int64 flag whose default is *p.
func (f *FlagSet) Int64(p *int64, name, env, usage string) {
	f.fs.Int64Var(p, name, *p, f.bind(name, env, usage))
}

// Float64 defines a float64 flag whose default is *p.
func (f *FlagSet) Float64(p *float64, name, env, usage string) {
	f.fs.Float64Var(p, name, *p, f.bind(name, env, usage))
}

// Duration defines a duration flag (such as 90s or 5m) whose default is *p.
func (f *FlagSet) Duration(p *time.Duration, name, env, usage string) {
	f.fs.DurationVar(p, name, *p, f.bind(name, env, usage))
}

// List defines a flag of comma-separated values whose default is *p; blank
// items are dropped.
func (f *FlagSet) List(p *[]string, name, env, usage string) {
	usage += " (default " + strings.Join(*p, ",") + ")"
	f.fs.Func(name, f.bind(name, env, usage), func(v string) error {
		*p = splitList(v)
		return nil
	})
}

// LogLevel defines the log level flag: debug, info, warn or error.
func (f *FlagSet) LogLevel(p *slog.Level, name, env string) {
	f.fs.Var((*level)(p), name, f.bind(name, env, "debug, info, warn or error"))
}

// Parse parses args, then sets every flag the command line did not give
// from its environment variable, when that is set.
func (f *FlagSet) Parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(f.env)) {
		env := f.env[name]
		v, ok := os.LookupEnv(env)
		if !ok || given[name] {
			continue
		}
		if err := f.fs.Set(name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (for --%s): %w", env, v, name, err))
		}
	}
	return errors.Join(errs...)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// level is a slog.Level that takes exactly the four names the binaries
// document, where slog itself would also take "INFO+2".
type level slog.Level

func (l *level) String() string {
	if l == nil {
		return "info"
	}
	return strings.ToLower(slog.Level(*l).String())
}

func (l *level) Set(s string) error {
	switch s {
	case "debug":
		*l = level(slog.LevelDebug)
	case "info":
		*l = level(slog.LevelInfo)
	case "warn":
		*l = level(slog.LevelWarn)
	case "error":
		*l = level(slog.LevelError)
	default:
		return errors.New("want debug, info, warn or error")
	}
	return nil
}
