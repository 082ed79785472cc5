package testlog

import (
	"log/slog"
	"strings"
	"testing"
)

// TestNewAtFilters: records below the level are not written, and none
// after the test has ended (a write to a finished test's output is an
// error or a panic, depending on the Go release).
func TestNewAtFilters(t *testing.T) {
	var got strings.Builder
	w := &writer{out: &got}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
	log.Info("quiet")
	log.Warn("loud")
	if s := got.String(); strings.Contains(s, "quiet") || !strings.Contains(s, "loud") {
		t.Errorf("at warn, the output is %q", s)
	}
	w.close()
	log.Warn("closed")
	if strings.Contains(got.String(), "closed") {
		t.Error("a record after close was written")
	}
}
