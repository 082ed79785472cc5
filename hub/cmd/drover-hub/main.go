// Command drover-hub runs Drover's hub: the agent endpoint, the admin API,
// the Git watcher and the fleet's store.
//
//	drover-hub [flags]           run the hub
//	drover-hub migrate [flags]   apply database migrations and exit
//	drover-hub admin-token --database-url URL --name NAME
//	                             make an admin API token in the database
//	                             and print it
//	drover-hub version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/envflag"
	"github.com/drover-dev/drover/internal/version"
	"github.com/drover-dev/drover/migrations"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "drover-hub:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := ""
	if len(args) > 0 && (args[0] == "migrate" || args[0] == "version") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "version" {
		fmt.Println("drover-hub", version.Version)
		return nil
	}
	if len(args) > 0 && args[0] == "admin-token" {
		return adminToken(args[1:], os.Stdout, os.Stderr)
	}
	cfg := server.DefaultConfig()
	fs := envflag.New(flag.NewFlagSet("drover-hub", flag.ContinueOnError))
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
	if cmd == "migrate" {
		if cfg.DatabaseURL == "" {
			return errors.New("migrate needs --database-url (the embedded PostgreSQL is migrated at start)")
		}
		return migrations.UpURL(ctx, cfg.DatabaseURL, migrations.WithLogger(logger))
	}
	return server.Run(ctx, cfg, logger, os.Stdout)
}

// adminToken makes a new admin API token straight in the database and
// prints it, alone, to standard output: for bootstrap and recovery by
// whoever holds the database's credentials (in Kubernetes, kubectl exec
// into any replica, whose environment has them). Messages go to stderr.
func adminToken(args []string, stdout, stderr io.Writer) error {
	var databaseURL, name string
	flags := flag.NewFlagSet("drover-hub admin-token", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.StringVar(&name, "name", "", "name of the new token, unique among API tokens (it is the actor in the audit log)")
	fs := envflag.New(flags)
	fs.String(&databaseURL, "database-url", "DROVER_DATABASE_URL", "PostgreSQL URL of the hub's database")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if name == "" {
		return errors.New("admin-token: --name is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tok, err := server.CreateAdminToken(ctx, databaseURL, name, logger)
	if err != nil {
		return fmt.Errorf("admin-token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stderr, "Admin API token %q made; it is shown only this once. Sign in with:\n    droverctl login --server URL < FILE\n", name)
	return nil
}
