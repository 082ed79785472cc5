package server_test

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
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
