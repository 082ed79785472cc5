package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/drover-dev/drover/hub/adminapi"
	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// CreateAdminToken makes a new admin API token named name straight in the
// database at databaseURL, with no hub running, and returns the token:
// for bootstrap and recovery by whoever holds the database's credentials,
// when the initial token is out of reach (it lies in one replica's data
// directory) or every admin token is lost. It records an audit event.
func CreateAdminToken(ctx context.Context, databaseURL, name string, logger *slog.Logger) (string, error) {
	if !strings.HasPrefix(databaseURL, "postgres://") && !strings.HasPrefix(databaseURL, "postgresql://") {
		return "", errors.New("--database-url: want postgres://USER:PASSWORD@HOST:PORT/DB, the hub's database")
	}
	st, err := store.Open(ctx, databaseURL, logger)
	if err != nil {
		return "", fmt.Errorf("database: %w", err)
	}
	defer st.Close()
	now := time.Now()
	tok, t, err := st.CreateAPIToken(ctx, name, adminapi.RoleAdmin, 0, now)
	switch {
	case errors.Is(err, store.ErrConflict):
		return "", fmt.Errorf("--name %q: an API token of that name exists: choose another name (droverctl token list shows them)", name)
	case errors.Is(err, store.ErrInvalidArgument):
		return "", fmt.Errorf("--name: %w", err)
	case err != nil:
		return "", fmt.Errorf("create the admin token: %w (has a hub or `drover-hub migrate` run on this database?)", err)
	}
	// Who did it is not known to the hub: it is whoever holds the
	// database's credentials, acting as the hub does.
	e := &droverv1.Event{
		Time: timestamppb.New(now), Kind: "api_token.created", Actor: "hub",
		Message: fmt.Sprintf("API token %s (%s, role %s) created with drover-hub admin-token", t.GetId(), t.GetName(), t.GetRole()),
	}
	if err := st.AddEvent(ctx, e); err != nil {
		// The token exists and works: print it rather than lose it.
		logger.Error("record audit event", "kind", e.GetKind(), "err", err)
	}
	return tok, nil
}
