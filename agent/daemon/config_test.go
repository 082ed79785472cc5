package daemon

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/drover-dev/drover/internal/envflag"
)

// firstStart is a configuration that passes Validate: the agent's first
// start with everything it needs.
func firstStart(t *testing.T, args ...string) Config {
	t.Helper()
	c, err := parseFirstStart(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parseFirstStart(t *testing.T, args ...string) (Config, error) {
	c := DefaultConfig()
	fs := envflag.New(flag.NewFlagSet("drover-agent", flag.ContinueOnError))
	c.RegisterFlags(fs)
	base := []string{"--hub", "127.0.0.1:8443", "--hub-ca", "ca.crt", "--join-token", "t", "--cluster-name", "c", "--state-dir", t.TempDir()}
	return c, fs.Parse(append(base, args...))
}

func TestRenderLimitsConfig(t *testing.T) {
	c := firstStart(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.MaxManifestBytes != 8<<20 || c.MaxRenderBytes != 16<<20 || c.MaxRenderObjects != 10000 {
		t.Errorf("defaults = %d, %d, %d; want 8 MiB, 16 MiB, 10000", c.MaxManifestBytes, c.MaxRenderBytes, c.MaxRenderObjects)
	}

	t.Setenv("DROVER_MAX_MANIFEST_BYTES", "1048576")
	t.Setenv("DROVER_MAX_RENDER_OBJECTS", "50")
	c = firstStart(t, "--max-render-bytes", "2097152")
	if err := c.Validate(); err != nil || c.MaxManifestBytes != 1<<20 || c.MaxRenderBytes != 2<<20 || c.MaxRenderObjects != 50 {
		t.Errorf("from the environment and flags: %d, %d, %d (%v); want 1 MiB, 2 MiB, 50", c.MaxManifestBytes, c.MaxRenderBytes, c.MaxRenderObjects, c.Validate())
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-manifest-bytes", "0"}, "--max-manifest-bytes 0: a positive number of bytes"},
		{[]string{"--max-render-bytes", "-1"}, "--max-render-bytes -1: a positive number of bytes"},
		{[]string{"--max-render-objects", "0"}, "--max-render-objects 0: a positive number"},
	} {
		c := firstStart(t, tt.args...)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: Validate = %v; want %q", tt.args, err, tt.want)
		}
	}
	t.Setenv("DROVER_MAX_RENDER_OBJECTS", "many")
	if _, err := parseFirstStart(t); err == nil || !strings.Contains(err.Error(), `DROVER_MAX_RENDER_OBJECTS="many"`) {
		t.Errorf("DROVER_MAX_RENDER_OBJECTS=many: %v; want it refused, naming the variable", err)
	}
}

func TestKubeAPIRateLimitsConfig(t *testing.T) {
	c := firstStart(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.KubeAPIQPS != 100 || c.KubeAPIBurst != 200 {
		t.Errorf("defaults = %v, %d; want 100, 200", c.KubeAPIQPS, c.KubeAPIBurst)
	}

	t.Setenv("DROVER_KUBE_API_QPS", "20.5")
	t.Setenv("DROVER_KUBE_API_BURST", "40")
	c = firstStart(t)
	if err := c.Validate(); err != nil || c.KubeAPIQPS != 20.5 || c.KubeAPIBurst != 40 {
		t.Errorf("from the environment: %v, %d (%v); want 20.5, 40", c.KubeAPIQPS, c.KubeAPIBurst, err)
	}
	c = firstStart(t, "--kube-api-qps", "300", "--kube-api-burst", "600")
	if err := c.Validate(); err != nil || c.KubeAPIQPS != 300 || c.KubeAPIBurst != 600 {
		t.Errorf("flags over the environment: %v, %d (%v); want 300, 600", c.KubeAPIQPS, c.KubeAPIBurst, err)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--kube-api-qps", "0"}, "--kube-api-qps 0: a positive number of requests per second"},
		{[]string{"--kube-api-qps", "-5"}, "--kube-api-qps -5: a positive number of requests per second"},
		{[]string{"--kube-api-qps", "NaN"}, "--kube-api-qps NaN: a positive number of requests per second"},
		{[]string{"--kube-api-burst", "0"}, "--kube-api-burst 0: a positive number of requests"},
		{[]string{"--kube-api-burst", "-1"}, "--kube-api-burst -1: a positive number of requests"},
	} {
		c := firstStart(t, tt.args...)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: Validate = %v; want %q", tt.args, err, tt.want)
		}
	}
	t.Setenv("DROVER_KUBE_API_QPS", "fast")
	if _, err := parseFirstStart(t); err == nil || !strings.Contains(err.Error(), `DROVER_KUBE_API_QPS="fast"`) {
		t.Errorf("DROVER_KUBE_API_QPS=fast: %v; want it refused, naming the variable", err)
	}
}

func TestSyncIntervalConfig(t *testing.T) {
	if c := firstStart(t); c.SyncInterval != 5*time.Minute {
		t.Errorf("default --sync-interval = %v, want 5m", c.SyncInterval)
	}
	t.Setenv("DROVER_SYNC_INTERVAL", "90s")
	if c := firstStart(t); c.SyncInterval != 90*time.Second || c.Validate() != nil {
		t.Errorf("DROVER_SYNC_INTERVAL=90s: %v (%v), want 1m30s", c.SyncInterval, c.Validate())
	}
	c := firstStart(t, "--sync-interval", "0s")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--sync-interval 0s: at least 1s") {
		t.Errorf("--sync-interval 0s: Validate = %v", err)
	}
}

func TestHubAddrsConfig(t *testing.T) {
	for _, hub := range []string{"hub.example:8443", "10.0.0.1:8443,10.0.0.2:8443,hub-c.example:8443"} {
		if c := firstStart(t, "--hub", hub); c.Validate() != nil {
			t.Errorf("--hub %s: %v", hub, c.Validate())
		}
	}
	t.Setenv("DROVER_HUB", "a.example:8443,b.example:8443")
	c := DefaultConfig()
	fs := envflag.New(flag.NewFlagSet("drover-agent", flag.ContinueOnError))
	c.RegisterFlags(fs)
	err := fs.Parse([]string{"--hub-ca", "ca.crt", "--join-token", "t", "--cluster-name", "c", "--state-dir", t.TempDir()})
	if err != nil || c.HubAddr != "a.example:8443,b.example:8443" || c.Validate() != nil {
		t.Errorf("DROVER_HUB: %q (%v, %v)", c.HubAddr, err, c.Validate())
	}

	for _, tt := range []struct{ hub, want string }{
		{"", `--hub "": no address: want HOST:PORT`},
		{"hub.example", `--hub "hub.example": address "hub.example": want HOST:PORT`},
		{"a.example:8443,", `--hub "a.example:8443,": address 2 is empty`},
		{"a.example:8443,b.example", `address "b.example": want HOST:PORT`},
		{"a.example:https", `port "https" is not a number from 1 to 65535`},
		{"a.example:8443,a.example:8443", `address "a.example:8443" is given twice`},
	} {
		c := firstStart(t, "--hub", tt.hub)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("--hub %q: Validate = %v; want %q", tt.hub, err, tt.want)
		}
	}
}

func TestHookTimeoutConfig(t *testing.T) {
	if c := firstStart(t); c.HookTimeout != 5*time.Minute {
		t.Errorf("default --hook-timeout = %v, want 5m, Helm's --timeout", c.HookTimeout)
	}
	t.Setenv("DROVER_HOOK_TIMEOUT", "20m")
	if c := firstStart(t); c.HookTimeout != 20*time.Minute || c.Validate() != nil {
		t.Errorf("DROVER_HOOK_TIMEOUT=20m: %v (%v), want 20m", c.HookTimeout, c.Validate())
	}
	c := firstStart(t, "--hook-timeout", "0s")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--hook-timeout 0s: at least 1s") {
		t.Errorf("--hook-timeout 0s: Validate = %v", err)
	}
}
