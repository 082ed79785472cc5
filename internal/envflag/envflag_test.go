package envflag

import (
	"flag"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

type config struct {
	addr     string
	n        int
	size     int64
	interval time.Duration
	names    []string
	level    slog.Level
}

func parse(t *testing.T, args ...string) (config, error) {
	t.Helper()
	c := config{addr: ":1", n: 1, size: 2, interval: time.Second, names: []string{"a"}}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := New(fs)
	f.String(&c.addr, "addr", "T_ADDR", "")
	f.Int(&c.n, "n", "T_N", "")
	f.Int64(&c.size, "size", "T_SIZE", "")
	f.Duration(&c.interval, "interval", "T_INTERVAL", "")
	f.List(&c.names, "names", "T_NAMES", "")
	f.LogLevel(&c.level, "log-level", "T_LOG_LEVEL")
	return c, f.Parse(args)
}

func TestDefaultsEnvironmentAndFlags(t *testing.T) {
	c, err := parse(t)
	if err != nil || c.addr != ":1" || c.n != 1 || c.size != 2 || c.interval != time.Second || !slices.Equal(c.names, []string{"a"}) || c.level != slog.LevelInfo {
		t.Fatalf("defaults: %+v, %v", c, err)
	}

	t.Setenv("T_ADDR", ":2")
	t.Setenv("T_N", "3")
	t.Setenv("T_SIZE", "4")
	t.Setenv("T_INTERVAL", "5m")
	t.Setenv("T_NAMES", "x, y,,z")
	t.Setenv("T_LOG_LEVEL", "debug")
	c, err = parse(t)
	if err != nil || c.addr != ":2" || c.n != 3 || c.size != 4 || c.interval != 5*time.Minute || !slices.Equal(c.names, []string{"x", "y", "z"}) || c.level != slog.LevelDebug {
		t.Fatalf("from the environment: %+v, %v", c, err)
	}

	c, err = parse(t, "--addr", ":9", "--n", "7", "--names", "q", "--log-level", "error")
	if err != nil || c.addr != ":9" || c.n != 7 || !slices.Equal(c.names, []string{"q"}) || c.level != slog.LevelError {
		t.Fatalf("flags over the environment: %+v, %v", c, err)
	}
	if c.size != 4 || c.interval != 5*time.Minute {
		t.Errorf("flags not given still come from the environment: %+v", c)
	}
}

func TestBadEnvironmentNamesTheVariable(t *testing.T) {
	t.Setenv("T_N", "many")
	t.Setenv("T_INTERVAL", "soon")
	t.Setenv("T_LOG_LEVEL", "INFO+2")
	_, err := parse(t)
	if err == nil {
		t.Fatal("unparsable environment accepted")
	}
	for _, want := range []string{`T_N="many" (for --n)`, `T_INTERVAL="soon" (for --interval)`, `T_LOG_LEVEL="INFO+2" (for --log-level): want debug, info, warn or error`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	// A flag given on the command line makes its variable irrelevant.
	if _, err := parse(t, "--n", "1", "--interval", "1s", "--log-level", "warn"); err != nil {
		t.Errorf("variables overridden by flags still refused: %v", err)
	}
	if _, err := parse(t, "--log-level", "verbose"); err == nil || !strings.Contains(err.Error(), "want debug, info, warn or error") {
		t.Errorf("--log-level verbose: %v", err)
	}
}
