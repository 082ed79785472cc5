// Command drover-agent runs in one cluster: it dials out to the Drover hub,
// applies the cluster's assignment and reports its state.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/drover-dev/drover/agent/daemon"
	"github.com/drover-dev/drover/internal/envflag"
	"github.com/drover-dev/drover/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "drover-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "version" {
		fmt.Println("drover-agent", version.Version)
		return nil
	}
	cfg := daemon.DefaultConfig()
	fs := envflag.New(flag.NewFlagSet("drover-agent", flag.ContinueOnError))
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, cfg, logger)
}
