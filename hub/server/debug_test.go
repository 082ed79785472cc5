package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/drover-dev/drover/hub/server"
)

// TestDebugListener checks that profiles are served on --debug-addr only,
// never on the API listener, and that the listener is off by default.
func TestDebugListener(t *testing.T) {
	get := func(t *testing.T, url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	h := startHub(t, func(c *server.Config) { c.DebugAddr = "127.0.0.1:0" })
	if code, body := get(t, "http://"+h.DebugAddr()+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("debug listener: HTTP %d: %.200s", code, body)
	}
	if code, body := get(t, "http://"+h.HTTPAddr()+"/debug/pprof/goroutine?debug=1"); code == http.StatusOK && strings.Contains(body, "goroutine profile") {
		t.Fatal("the API listener serves profiles")
	}

	if off := startHub(t); off.DebugAddr() != "" {
		t.Fatalf("debug listener on by default at %s", off.DebugAddr())
	}
}

func TestConfigValidateScaleSettings(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*server.Config)
		wantErr string
	}{
		{"defaults", func(*server.Config) {}, ""},
		{"debug on loopback", func(c *server.Config) { c.DebugAddr = "127.0.0.1:6060" }, ""},
		{"debug without port", func(c *server.Config) { c.DebugAddr = "localhost" }, "--debug-addr"},
		{"no admissions", func(c *server.Config) { c.MaxAgentAdmissions = 0 }, "--max-agent-admissions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := server.DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.wantErr)
			}
		})
	}
}
