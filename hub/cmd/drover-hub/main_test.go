package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/store"
	"github.com/drover-dev/drover/internal/testlog"
	"github.com/drover-dev/drover/migrations"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// `drover-hub admin-token` prints the new token alone on standard output,
// so that `> FILE` keeps exactly the token, and nothing else holds it; the
// database URL comes from the environment, as in a hub's container.
func TestAdminTokenCommand(t *testing.T) {
	ctx := context.Background()
	db := testbed.Postgres(t)
	if err := migrations.UpURL(ctx, db); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DROVER_DATABASE_URL", db)
	var stdout, stderr bytes.Buffer
	if err := adminToken([]string{"--name", "ops"}, &stdout, &stderr); err != nil {
		t.Fatalf("admin-token: %v\n%s", err, stderr.String())
	}
	tok := strings.TrimSuffix(stdout.String(), "\n")
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("standard output %q: want the token alone on one line", stdout.String())
	}
	if strings.Contains(stderr.String(), tok) {
		t.Errorf("the token is in the messages too: %s", stderr.String())
	}
	st, err := store.Open(ctx, db, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.AuthenticateAPIToken(ctx, tok, time.Now())
	if err != nil || got.GetName() != "ops" || got.GetRole() != "admin" {
		t.Errorf("the printed token authenticates as %v (%v), want ops, role admin", got, err)
	}

	stdout.Reset()
	if err := adminToken([]string{"--database-url", db}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "--name is required") {
		t.Errorf("admin-token without --name: err = %v", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("a refused admin-token printed %q", stdout.String())
	}
}
