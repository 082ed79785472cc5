package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// The initial admin token is written to its file only: what the hub
// prints ends up in container logs, so it says where the token is, and
// neither its output nor its log holds the token.
func TestInitialAdminTokenOnlyInItsFile(t *testing.T) {
	var out, logs bytes.Buffer
	h := startHubWriting(t, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), &out)
	if h.token == "" {
		t.Fatal("no initial admin token in its file")
	}
	if strings.Contains(out.String(), h.token) || strings.Contains(logs.String(), h.token) {
		t.Errorf("the hub printed or logged the initial admin token:\n%s\n%s", out.String(), logs.String())
	}
	if path := filepath.Join(h.cfg.DataDir, "admin-token"); !strings.Contains(out.String(), path) {
		t.Errorf("the hub's output %q does not say the token is in %s", out.String(), path)
	}
}

// drover-hub admin-token makes an admin API token straight in the
// database: a running hub takes it for admin work, the audit log says how
// it was made, and a name already taken is refused without a second token.
func TestCreateAdminToken(t *testing.T) {
	h := startHub(t)
	ctx := context.Background()
	tok, err := server.CreateAdminToken(ctx, h.cfg.DatabaseURL, "recovery", testlog.New(t))
	if err != nil {
		t.Fatalf("CreateAdminToken: %v", err)
	}
	if code, body := h.api(t, tok, "POST", "/api/v1/join-tokens", &droverv1.CreateJoinTokenRequest{}, nil); code != http.StatusOK {
		t.Fatalf("the hub refuses admin work with the new token: HTTP %d: %s", code, body)
	}
	var events droverv1.ListEventsResponse
	h.mustAPI(t, "GET", "/api/v1/events", nil, &events)
	var audited bool
	for _, e := range events.GetEvents() {
		audited = audited || e.GetKind() == "api_token.created" && strings.Contains(e.GetMessage(), "(recovery, role admin) created with drover-hub admin-token")
	}
	if !audited {
		t.Errorf("no audit event for the new token: %v", events.GetEvents())
	}

	for _, name := range []string{"recovery", "admin"} {
		if _, err := server.CreateAdminToken(ctx, h.cfg.DatabaseURL, name, testlog.New(t)); err == nil || !strings.Contains(err.Error(), "an API token of that name exists") {
			t.Errorf("CreateAdminToken(%q), a taken name: err = %v", name, err)
		}
	}
	if _, err := server.CreateAdminToken(ctx, h.cfg.DatabaseURL, "Not A Name!", testlog.New(t)); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("CreateAdminToken with a bad name: err = %v", err)
	}
	var tokens droverv1.ListAPITokensResponse
	h.mustAPI(t, "GET", "/api/v1/api-tokens", nil, &tokens)
	if n := len(tokens.GetApiTokens()); n != 2 {
		t.Errorf("%d API tokens after the refused ones, want 2 (the initial one and recovery): %v", n, tokens.GetApiTokens())
	}
}
